/*
 * Emit-cost benchmark for the gpuscope ring, with its baselines measured in the
 * same run; prints one JSON object.
 *
 *   gpuscope-ring-bench [--events E per thread] [--capacity C] [--path P]
 *   gpuscope-ring-bench --fill PATH --records N   (N records, one thread, then close)
 *
 * Each thread times batches of emits with clock_gettime; the percentiles are
 * over the per-event means of those batches, net of the timer: the p50 of an
 * empty batch (timer_ns: the span between two clock reads, about 19 ns on the
 * Xeon VM, 0.6 ns per event of a 32-event batch) is taken off every batch
 * first. Two-thread runs start together at a barrier; *_overlap_2t says how much of the run both threads really
 * ran at once (1.0: all of it). The ring is much smaller than the number of
 * events, so it wraps many times; writer_dropped counts records given up by
 * a producer whose next blocks were all still held by lapped threads. Two more
 * references say what an emit's nanoseconds are spent on: a raw TSC read (x86
 * only; an emit takes one where the TSC is invariant) and one uncontended
 * locked read-modify-write (an emit does none; a block claim, every 256
 * records, does two). The floor is an emit's own stores with none of its
 * bookkeeping: a TSC read and one 64-byte record written and committed as an
 * emit writes it, into a private ring, with no thread lookup, no block, no
 * count and no close protocol.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "../gpuscope_ring.h"
#include "ring_file.h"

#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#  include <x86intrin.h>
#  define HAVE_RDTSC 1
#endif

#define BATCH          32   /* events per timed batch */
#define DISABLED_BATCH 1024 /* the disabled branch is below a nanosecond: amortize the timer more */
#define MAX_THREADS    2

struct worker;
typedef void (*batch_fn)(struct worker * w, unsigned n);

struct worker {
    unsigned         index;
    uint32_t         tid;
    uint64_t         counter;
    gpuscope_ev_mark ev;
    batch_fn         run_batch;
    unsigned         batch;
    uint64_t         n_batches;
    double *         means; /* ns per event, one per batch */
    double           start_ns, end_ns;
};

static pthread_barrier_t start_barrier;
static double timer_ns; /* what timing a batch adds to it: see measure_timer */

/* Baseline: the same 64-byte records into a ring guarded by one mutex. */
static struct {
    pthread_mutex_t   lock;
    uint64_t          cursor;
    uint64_t          mask;
    gpuscope_record * records;
} mutex_ring = { PTHREAD_MUTEX_INITIALIZER, 0, 0, NULL };

static double now_ns(void) {
    return (double)gpuscope_now_ns();
}

static void next_mark(struct worker * w) {
    w->ev.value  = (int64_t)(((uint64_t)w->index << 40) | w->counter++);
    w->ev.value2 = w->ev.value * 3;
}

static void emit_batch(struct worker * w, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        next_mark(w);
        GPUSCOPE_EMIT(MARK, -1, w->ev);
    }
}

static void clock_batch(struct worker * w, unsigned n) {
    int64_t sum = 0;
    for (unsigned i = 0; i < n; i++) {
        sum += gpuscope_now_ns();
    }
    w->counter += (uint64_t)sum & 1; /* keeps the calls observable */
}

#ifdef HAVE_RDTSC
static void rdtsc_batch(struct worker * w, unsigned n) {
    uint64_t sum = 0;
    for (unsigned i = 0; i < n; i++) {
        sum += __rdtsc();
    }
    w->counter += sum & 1;
}
#endif

#ifdef HAVE_RDTSC
/* An emit's stores alone (see the top): BUSY, timestamp, header, payload, commit. */
_Static_assert(sizeof(gpuscope_ev_mark) % 8 == 0, "the floor copies the payload in 8-byte words");
static void record_floor_batch(struct worker * w, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        next_mark(w);
        const uint64_t ticket = mutex_ring.cursor++;
        gpuscope_record * rec = &mutex_ring.records[ticket & mutex_ring.mask];
        __atomic_store_n(&rec->seq, (ticket + 1) | GPUSCOPE_SEQ_BUSY, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
        rec->ts_ns  = __rdtsc();
        rec->kind   = GPUSCOPE_KIND_MARK;
        rec->device = -1;
        rec->tid    = w->tid;
        const uint8_t * from = (const uint8_t *)&w->ev;
        for (size_t at = 0; at < GPUSCOPE_PAYLOAD_SIZE; at += 8) {
            uint64_t word = 0;
            if (at < sizeof(w->ev)) {
                memcpy(&word, from + at, 8);
            }
            memcpy(rec->payload + at, &word, 8);
        }
        __atomic_store_n(&rec->seq, ticket + 1, __ATOMIC_RELEASE);
    }
}
#endif

static void locked_rmw_batch(struct worker * w, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        __atomic_fetch_add(&w->counter, 1, __ATOMIC_RELAXED);
    }
}

static void mutex_ring_batch(struct worker * w, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        next_mark(w);
        const int64_t ts = gpuscope_now_ns();
        pthread_mutex_lock(&mutex_ring.lock);
        const uint64_t ticket = mutex_ring.cursor++;
        gpuscope_record * rec = &mutex_ring.records[ticket & mutex_ring.mask];
        rec->seq    = ticket + 1;
        rec->ts_ns  = (uint64_t)ts;
        rec->kind   = GPUSCOPE_KIND_MARK;
        rec->device = -1;
        rec->tid    = w->tid;
        memcpy(rec->payload, &w->ev, sizeof(w->ev));
        memset(rec->payload + sizeof(w->ev), 0, GPUSCOPE_PAYLOAD_SIZE - sizeof(w->ev));
        pthread_mutex_unlock(&mutex_ring.lock);
    }
}

static void * run_worker(void * arg) {
    struct worker * w = arg;
    w->tid = (uint32_t)syscall(SYS_gettid);
    w->run_batch(w, w->batch); /* warm caches and the thread id */
    pthread_barrier_wait(&start_barrier);
    w->start_ns = now_ns();
    for (uint64_t b = 0; b < w->n_batches; b++) {
        const double t0 = now_ns();
        w->run_batch(w, w->batch);
        w->means[b] = (now_ns() - t0 - timer_ns) / w->batch;
    }
    w->end_ns = now_ns();
    return NULL;
}

static int compare_doubles(const void * a, const void * b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The p50 of an empty timed batch: what the clock reads add to every batch. */
static double measure_timer(void) {
    enum { SAMPLES = 1 << 16 };
    static double spans[SAMPLES];
    for (unsigned i = 0; i < SAMPLES; i++) {
        const double t0 = now_ns();
        spans[i] = now_ns() - t0;
    }
    qsort(spans, SAMPLES, sizeof(double), compare_doubles);
    return spans[SAMPLES / 2];
}

static int json_fields;

static void json_number(const char * key, double value) {
    printf("%s\"%s\": %.2f", json_fields++ ? ", " : "{", key, value);
}

static void json_integer(const char * key, uint64_t value) {
    printf("%s\"%s\": %" PRIu64, json_fields++ ? ", " : "{", key, value);
}

/* Share of the longest thread's run during which every thread was running:
 * near 1 when the threads really overlapped. */
static double overlap(const struct worker * workers, unsigned threads) {
    double last_start = workers[0].start_ns, first_end = workers[0].end_ns, longest = 0;
    for (unsigned i = 0; i < threads; i++) {
        last_start = workers[i].start_ns > last_start ? workers[i].start_ns : last_start;
        first_end  = workers[i].end_ns < first_end ? workers[i].end_ns : first_end;
        const double span = workers[i].end_ns - workers[i].start_ns;
        longest = span > longest ? span : longest;
    }
    return first_end > last_start ? (first_end - last_start) / longest : 0.0;
}

/* Runs `fn` on `threads` concurrent threads, `events` per thread, and prints
 * <prefix>_p50<suffix>, <prefix>_p99<suffix> and, with several threads,
 * <prefix>_overlap<suffix>. */
static void measure(const char * prefix, const char * suffix, batch_fn fn, unsigned threads,
                    unsigned batch, uint64_t events, int with_p99) {
    struct worker workers[MAX_THREADS];
    pthread_t handles[MAX_THREADS];
    char key[64];
    const uint64_t n_batches = events / batch;
    double * means = malloc(sizeof(double) * n_batches * threads);
    if (means == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    pthread_barrier_init(&start_barrier, NULL, threads);
    for (unsigned i = 0; i < threads; i++) {
        memset(&workers[i], 0, sizeof(workers[i]));
        workers[i].index     = i;
        workers[i].ev.name   = gpuscope_intern("bench");
        workers[i].run_batch = fn;
        workers[i].batch     = batch;
        workers[i].n_batches = n_batches;
        workers[i].means     = means + i * n_batches;
        pthread_create(&handles[i], NULL, run_worker, &workers[i]);
    }
    for (unsigned i = 0; i < threads; i++) {
        pthread_join(handles[i], NULL);
    }
    pthread_barrier_destroy(&start_barrier);
    if (threads > 1) {
        snprintf(key, sizeof(key), "%s_overlap%s", prefix, suffix);
        json_number(key, overlap(workers, threads));
    }

    const uint64_t n = n_batches * threads;
    qsort(means, n, sizeof(double), compare_doubles);
    snprintf(key, sizeof(key), "%s_p50%s", prefix, suffix);
    json_number(key, means[n / 2]);
    if (with_p99) {
        snprintf(key, sizeof(key), "%s_p99%s", prefix, suffix);
        json_number(key, means[n * 99 / 100]);
    }
    free(means);
}

static int fill(const char * path, uint64_t records) {
    int rc = gpuscope_ring_open(path, records, 0);
    if (rc != 0) {
        fprintf(stderr, "cannot open ring %s: %s\n", path, strerror(-rc));
        return 1;
    }
    struct worker w;
    memset(&w, 0, sizeof(w));
    w.ev.name = gpuscope_intern("fill");
    for (uint64_t i = 0; i < records; i++) {
        emit_batch(&w, 1);
    }
    gpuscope_ring_close();
    printf("{\"written\": %" PRIu64 "}\n", records);
    return 0;
}

static void usage_exit(const char * prog) {
    fprintf(stderr, "usage: %s [--events E] [--capacity C] [--path P]\n"
                    "       %s --fill PATH --records N\n", prog, prog);
    exit(2);
}

int main(int argc, char ** argv) {
    static const struct option longopts[] = {
        { "events",   required_argument, NULL, 'e' },
        { "capacity", required_argument, NULL, 'c' },
        { "path",     required_argument, NULL, 'p' },
        { "fill",     required_argument, NULL, 'f' },
        { "records",  required_argument, NULL, 'r' },
        { NULL, 0, NULL, 0 },
    };
    uint64_t events = 1u << 22, capacity = 1u << 16, records = 0;
    const char * path = NULL;
    const char * fill_path = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
            case 'e': events    = strtoull(optarg, NULL, 10); break;
            case 'c': capacity  = strtoull(optarg, NULL, 10); break;
            case 'p': path      = optarg; break;
            case 'f': fill_path = optarg; break;
            case 'r': records   = strtoull(optarg, NULL, 10); break;
            default:  usage_exit(argv[0]);
        }
    }
    if (optind != argc || (fill_path != NULL) != (records != 0) || events < DISABLED_BATCH ||
        capacity == 0 || (capacity & (capacity - 1)) != 0) {
        usage_exit(argv[0]);
    }
    if (fill_path != NULL) {
        return fill(fill_path, records);
    }

    char default_path[64];
    if (path == NULL) {
        snprintf(default_path, sizeof(default_path), "/dev/shm/gpuscope-bench-%d.ring", (int)getpid());
        path = default_path;
    }
    timer_ns = measure_timer();
    json_number("timer_ns", timer_ns);
    int rc = gpuscope_ring_open(path, capacity, 0);
    if (rc != 0) {
        fprintf(stderr, "cannot open ring %s: %s\n", path, strerror(-rc));
        return 1;
    }
    measure("emit_ns", "_1t", emit_batch, 1, BATCH, events, 1);
    measure("emit_ns", "_2t", emit_batch, 2, BATCH, events, 1);
    gpuscope_ring_close();
    json_integer("writer_dropped", read_ring_dropped(path));
    unlink(path);

    measure("clock_gettime_ns", "", clock_batch, 1, BATCH, events, 1);
#ifdef HAVE_RDTSC
    measure("rdtsc_ns", "", rdtsc_batch, 1, BATCH, events, 1);
#endif
    measure("locked_rmw_ns", "", locked_rmw_batch, 1, BATCH, events, 1);
    mutex_ring.mask    = capacity - 1;
    mutex_ring.records = calloc(capacity, sizeof(gpuscope_record));
    measure("mutex_ring_ns", "_1t", mutex_ring_batch, 1, BATCH, events, 1);
    measure("mutex_ring_ns", "_2t", mutex_ring_batch, 2, BATCH, events, 1);
#ifdef HAVE_RDTSC
    measure("record_floor_ns", "", record_floor_batch, 1, BATCH, events, 1);
#endif
    free(mutex_ring.records);
    measure("disabled_emit_ns", "", emit_batch, 1, DISABLED_BATCH, events, 0);

    json_integer("events_per_thread", events);
    json_integer("capacity", capacity);
    json_integer("batch", BATCH);
    json_integer("disabled_batch", DISABLED_BATCH);
    printf("}\n");
    return 0;
}
