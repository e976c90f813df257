/*
 * gpuscope flight-recorder ring: the writer side of gpuscope_ring.h.
 *
 * Built standalone (gpuscope/ring/native.py) and as part of ggml-base, so every
 * global symbol carries the gpuscope_ prefix; everything else is static.
 * Atomics are GCC/Clang __atomic builtins: they work on the plain fields of the
 * shared header, which C++ and the Python reader see as ordinary integers.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "gpuscope_ring.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#  include <cpuid.h>
#  include <x86intrin.h>
#endif
#include <linux/membarrier.h>

#define PAGE_BYTES        4096u
#define EMPTY_ENTRY_BYTES 8u                    /* reserved entry at id 0: len 0, '\0', padding */
#define MIN_BLOCK_RECORDS 16u                   /* the smallest ring: 16 blocks of 16 */
#define CLAIM_ATTEMPTS    4                     /* blocks a thread tries before it gives a record up */
#define SEQ_MASK          ((1ULL << GPUSCOPE_WRITER_SHIFT) - 1)

/* Process-local view of one open ring. */
struct ring {
    gpuscope_ring_header * hdr;
    gpuscope_ring_writer * writers;
    uint64_t *             blocks;       /* block states */
    gpuscope_record *      records;
    char *                 strings;
    uint64_t               block_mask;   /* n_blocks - 1 */
    uint64_t               block_records;
    uint64_t               generation;   /* which open this is: thread state of an older ring is stale */
    int64_t                opened_ticks; /* TSC at the pair taken at open */
    int64_t                clock_due;    /* atomic: TSC at which an emit takes the next calibration pair */
    size_t                 map_bytes;
    uint64_t *             intern_slots; /* (content hash << 32) | string id; 0 = empty */
    uint64_t               intern_mask;
    size_t                 intern_bytes;
    char *                 path;
    int                    fd;           /* holds the ring's flock until close */
};

/* One producer thread, in process memory (never in the mapping: a reader
 * cannot disturb it). `inside` is written only by its thread; close reads it. */
struct producer {
    _Alignas(64) uint32_t inside;       /* 1 while the thread holds a ring pointer */
    uint32_t              tid;
    uint64_t              generation;   /* ring the fields below belong to, 0: none */
    gpuscope_ring_writer * writer;      /* its entry in that ring */
    gpuscope_record *     next;         /* next record of its block */
    gpuscope_record *     block_end;
    uint64_t *            block_state;  /* its block's state word, NULL: no block */
    uint64_t              block_key;    /* writer << 47 | sequence number of the block's first record */
    uint64_t              next_seq;     /* writer << 47 | sequence number of the next record */
    struct producer *     link;         /* every producer of the process, for close */
};

/* Address of this byte is the "not looked at $GPUSCOPE_RING yet" sentinel. */
static char lazy_open_sentinel;

void * volatile gpuscope_active = &lazy_open_sentinel;

/* Serializes open, close, lazy open, producer registration and every
 * insertion (interns, devices). */
static pthread_mutex_t ring_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct producer * producers;     /* under ring_mutex */
static uint64_t          generations;   /* under ring_mutex */
static pthread_key_t     producer_key;  /* runs retire_producer at thread exit */

/* Close must know that no thread still uses the ring it unmaps. A thread
 * announces itself with a plain store of `inside` and then loads the ring
 * pointer; close unpublishes the pointer, runs membarrier (a full barrier on
 * every thread of the process, which orders each thread's store before its
 * load) and waits for the flags. Where membarrier is refused the producers
 * pay the full fence themselves. Measured on the 2-core EPYC VM: the two
 * locked counters this replaces were 6 of a 37 ns emit. */
static int producers_fence;             /* 1: no membarrier, fence in enter_ring */

static int process_hooks_installed;
static int timestamp_clock = GPUSCOPE_CLOCK_MONOTONIC;
static int64_t clock_refresh_ticks;     /* ticks between calibration pairs */
static int64_t clock_ticks_per_s;

static const int crash_signals[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT };
#define N_CRASH_SIGNALS (sizeof(crash_signals) / sizeof(crash_signals[0]))
static struct sigaction previous_actions[N_CRASH_SIGNALS];

/* initial-exec: one %fs-relative load instead of a __tls_get_addr call in a
 * shared library (2 ns of a 36 ns emit); 8 bytes of the static TLS surplus
 * that glibc keeps for libraries loaded with dlopen. */
static _Thread_local struct producer * this_producer __attribute__((tls_model("initial-exec")));

int64_t gpuscope_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t read_ticks(void) {
#if defined(__x86_64__)
    return (int64_t)__rdtsc();
#else
    return gpuscope_now_ns();
#endif
}

/* What a record's timestamp field holds, in the ring's clock. */
static inline uint64_t record_timestamp(void) {
    return timestamp_clock == GPUSCOPE_CLOCK_TSC ? (uint64_t)read_ticks() : (uint64_t)gpuscope_now_ns();
}

/* TSC ticks stand for time only where the TSC is invariant (CPUID
 * 0x80000007 EDX bit 8: constant rate, not stopped in sleep states).
 * GPUSCOPE_RING_CLOCK=monotonic asks for the clock read anyway. */
static int choose_clock(void) {
    const char * asked = getenv("GPUSCOPE_RING_CLOCK");
    if (asked != NULL && strcmp(asked, "monotonic") == 0) {
        return GPUSCOPE_CLOCK_MONOTONIC;
    }
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid(0x80000007, &a, &b, &c, &d) && (d & (1u << 8)) != 0) {
        return GPUSCOPE_CLOCK_TSC;
    }
#endif
    return GPUSCOPE_CLOCK_MONOTONIC;
}

/* The ring pointer behind gpuscope_active, or NULL (no ring, or not opened yet). */
static struct ring * loaded_ring(void) {
    void * p = __atomic_load_n(&gpuscope_active, __ATOMIC_ACQUIRE);
    return p == &lazy_open_sentinel ? NULL : (struct ring *)p;
}

static uint64_t round_up_pow2(uint64_t v) {
    uint64_t p = 1;
    while (p < v) {
        p <<= 1;
    }
    return p;
}

static uint64_t round_up(uint64_t v, uint64_t multiple) {
    return (v + multiple - 1) / multiple * multiple;
}

/* ---- clock calibration ----------------------------------------------------- */

/* A (ticks, ns) pair read back to back; the pair of the tightest of three
 * tries, so a preemption between the two reads does not skew the reader's
 * conversion. */
static void take_clock_pair(struct ring * r) {
    gpuscope_ring_header * h = r->hdr;
    int64_t best_ticks = 0, best_ns = 0, best_width = INT64_MAX;
    for (int i = 0; i < 3; i++) {
        const int64_t before = read_ticks();
        const int64_t ns     = gpuscope_now_ns();
        const int64_t after  = read_ticks();
        if (after - before < best_width) {
            best_width = after - before;
            best_ticks = before + (after - before) / 2;
            best_ns    = ns;
        }
    }
    const uint64_t n = __atomic_fetch_add(&h->clock_pairs_taken, 1, __ATOMIC_RELAXED);
    const uint64_t i = n % GPUSCOPE_CLOCK_PAIRS;
    __atomic_store_n(&h->clock_pair_seq[i], 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&h->clock_pair_ticks[i], best_ticks, __ATOMIC_RELAXED);
    __atomic_store_n(&h->clock_pair_ns[i], best_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&h->clock_pair_seq[i], n + 1, __ATOMIC_RELEASE);
    if (n == 0) {
        r->opened_ticks = best_ticks;
    }
    /* The next pair a quarter of the ring's age later, 1 ms at least and the
     * refresh interval at most. A reader converts a record past the newest
     * pair with the rate over all pairs: spaced so, the extrapolation stays
     * under a quarter of the baseline that rate comes from (the 2 ms
     * calibration's rate alone was 6 ppm off on the EPYC VM: 16 us after 3 s). */
    int64_t interval = (best_ticks - r->opened_ticks) / 4;
    interval = interval < clock_refresh_ticks / 250 ? clock_refresh_ticks / 250 : interval;
    interval = interval > clock_refresh_ticks ? clock_refresh_ticks : interval;
    __atomic_store_n(&r->clock_due, best_ticks + interval, __ATOMIC_RELAXED);
}

/* The TSC rate over 2 ms, once per process: what the refresh interval is in
 * ticks, and what a reader converts with until a ring has a second pair. */
static void calibrate_clock(void) {
    const int64_t t0 = read_ticks(), n0 = gpuscope_now_ns();
    int64_t n1;
    do {
        n1 = gpuscope_now_ns();
    } while (n1 - n0 < 2000000);
    const double ticks_per_ns = (double)(read_ticks() - t0) / (double)(n1 - n0);
    clock_refresh_ticks = (int64_t)(ticks_per_ns * GPUSCOPE_CLOCK_REFRESH_NS);
    clock_ticks_per_s   = (int64_t)(ticks_per_ns * 1e9);
}

/* ---- crash and exit marking ------------------------------------------- */

static void chain_to_previous(int sig, siginfo_t * info, void * uctx) {
    const struct sigaction * prev = NULL;
    for (size_t i = 0; i < N_CRASH_SIGNALS; i++) {
        if (crash_signals[i] == sig) {
            prev = &previous_actions[i];
        }
    }
    if (prev == NULL || prev->sa_handler == SIG_IGN) {
        return;
    }
    if (prev->sa_handler == SIG_DFL) {
        /* The signal is blocked while we run: raise leaves it pending and it
         * kills the process with the default action as soon as we return. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(sig, &dfl, NULL);
        raise(sig);
        return;
    }
    if (prev->sa_flags & SA_SIGINFO) {
        prev->sa_sigaction(sig, info, uctx);
    } else {
        prev->sa_handler(sig);
    }
}

/* Async-signal-safe: two atomic stores, then the previous handler. */
static void mark_crashed(int sig, siginfo_t * info, void * uctx) {
    struct ring * r = loaded_ring();
    if (r != NULL) {
        __atomic_store_n(&r->hdr->crash_signal, sig, __ATOMIC_RELAXED);
        __atomic_store_n(&r->hdr->state, (uint32_t)GPUSCOPE_STATE_CRASHED, __ATOMIC_RELEASE);
    }
    chain_to_previous(sig, info, uctx);
}

/* OPEN -> CLOSED only: a ring already marked crashed keeps saying so. */
static void mark_closed(struct ring * r) {
    uint32_t expected = GPUSCOPE_STATE_OPEN;
    __atomic_compare_exchange_n(&r->hdr->state, &expected, (uint32_t)GPUSCOPE_STATE_CLOSED,
                                0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

static void mark_closed_at_exit(void) {
    struct ring * r = loaded_ring();
    if (r != NULL) {
        if (timestamp_clock == GPUSCOPE_CLOCK_TSC) {
            take_clock_pair(r);
        }
        mark_closed(r);
    }
}

static void retire_producer(void * p);

/* A forked child's one thread inherits the parent's producers, including its
 * own thread's entry and block in the shared ring: it must take new ones. */
static void reset_in_child(void) {
    producers = NULL;
    this_producer = NULL;
    pthread_setspecific(producer_key, NULL);
}

static void install_process_hooks_once(void) {
    if (process_hooks_installed) {
        return;
    }
    process_hooks_installed = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = mark_crashed;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < N_CRASH_SIGNALS; i++) {
        sigaction(crash_signals[i], &sa, &previous_actions[i]);
    }
    atexit(mark_closed_at_exit);
    pthread_atfork(NULL, NULL, reset_in_child);
    pthread_key_create(&producer_key, retire_producer);
    producers_fence = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0;
    timestamp_clock = choose_clock();
    if (timestamp_clock == GPUSCOPE_CLOCK_TSC) {
        calibrate_clock();
    }
}

/* ---- producers ------------------------------------------------------------ */

/* A thread's first use: its producer, or NULL when out of memory. Kept out of
 * line, so the emit's common path is one TLS load and a test. */
static __attribute__((noinline)) struct producer * make_producer(void) {
    struct producer * p;
    if (posix_memalign((void **)&p, 64, sizeof(*p)) != 0) {
        return NULL;
    }
    memset(p, 0, sizeof(*p));
    p->tid = (uint32_t)syscall(SYS_gettid);
    pthread_mutex_lock(&ring_mutex);
    p->link = producers;
    producers = p;
    pthread_mutex_unlock(&ring_mutex);
    this_producer = p;
    pthread_setspecific(producer_key, p);
    return p;
}

/* This thread's producer, made on its first use; NULL only when out of memory. */
static inline __attribute__((always_inline)) struct producer * current_producer(void) {
    struct producer * p = this_producer;
    return GPUSCOPE_UNLIKELY(p == NULL) ? make_producer() : p;
}

/* Announce, then look: see the comment at producers_fence. Returns the active
 * ring, kept mapped until leave_ring(), or NULL with nothing to leave. Never
 * take ring_mutex while inside: close waits for the threads inside with it held. */
static inline struct ring * enter_ring(struct producer * p) {
    __atomic_store_n(&p->inside, 1, __ATOMIC_RELAXED);
    if (GPUSCOPE_UNLIKELY(producers_fence)) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    } else {
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
    }
    struct ring * r = __atomic_load_n(&gpuscope_active, __ATOMIC_ACQUIRE);
    if (GPUSCOPE_UNLIKELY(r == NULL || (void *)r == &lazy_open_sentinel)) {
        __atomic_store_n(&p->inside, 0, __ATOMIC_RELEASE);
        return NULL;
    }
    return r;
}

static inline void leave_ring(struct producer * p) {
    __atomic_store_n(&p->inside, 0, __ATOMIC_RELEASE);
}

/* Give the block back: its state loses OPEN, so another thread may take it. */
static void release_block(struct producer * p) {
    if (p->block_state != NULL) {
        __atomic_store_n(p->block_state, p->block_key, __ATOMIC_RELEASE);
        p->block_state = NULL;
    }
}

/* A writer entry of ring r for this thread; 0 when every entry is taken
 * (tried again on its next record: threads that exit free theirs). */
static int attach(struct producer * p, struct ring * r) {
    p->generation  = r->generation;
    p->writer      = NULL;
    p->block_state = NULL;
    p->next = p->block_end = NULL;
    for (uint32_t i = 0; i < r->hdr->max_writers; i++) {
        uint32_t expected = 0;
        if (__atomic_load_n(&r->writers[i].in_use, __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(&r->writers[i].in_use, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            p->writer   = &r->writers[i];
            p->writer->tid = p->tid;
            p->next_seq = ((uint64_t)i << GPUSCOPE_WRITER_SHIFT) | (p->writer->emitted + 1);
            return 1;
        }
    }
    return 0;
}

/* Take the next free block (and a writer entry first, for a new ring); 0 when
 * there is no entry or CLAIM_ATTEMPTS blocks in a row were still open (their
 * owners lapped by the others). */
static int take_block(struct producer * p, struct ring * r) {
    if ((p->generation != r->generation || p->writer == NULL) && !attach(p, r)) {
        return 0;
    }
    release_block(p);
    for (int attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
        const uint64_t ticket = __atomic_fetch_add(&r->hdr->block_cursor, 1, __ATOMIC_RELAXED);
        const uint64_t index  = ticket & r->block_mask;
        uint64_t * state = &r->blocks[index];
        uint64_t seen = __atomic_load_n(state, __ATOMIC_RELAXED);
        if ((seen & GPUSCOPE_BLOCK_OPEN) == 0 &&
            __atomic_compare_exchange_n(state, &seen, p->next_seq | GPUSCOPE_BLOCK_OPEN, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            p->block_state = state;
            p->block_key   = p->next_seq;
            p->next        = &r->records[index * r->block_records];
            p->block_end   = p->next + r->block_records;
            return 1;
        }
    }
    return 0;
}

/* Thread exit: its block and writer entry go back to the ring, its producer
 * leaves the list close walks. */
static void retire_producer(void * arg) {
    struct producer * p = arg;
    struct ring * r = enter_ring(p);
    if (r != NULL) {
        if (p->generation == r->generation && p->writer != NULL) {
            release_block(p);
            __atomic_store_n(&p->writer->in_use, 0, __ATOMIC_RELEASE);
        }
        leave_ring(p);
    }
    pthread_mutex_lock(&ring_mutex);
    for (struct producer ** at = &producers; *at != NULL; at = &(*at)->link) {
        if (*at == p) {
            *at = p->link;
            break;
        }
    }
    pthread_mutex_unlock(&ring_mutex);
    this_producer = NULL;
    free(p);
}

/* ---- open / close -------------------------------------------------------- */

static void free_ring(struct ring * r) {
    munmap(r->hdr, r->map_bytes);
    close(r->fd); /* releases the flock: readers now see the writer gone */
    munmap(r->intern_slots, r->intern_bytes);
    free(r->path);
    free(r);
}

static void close_locked(void) {
    struct ring * r = loaded_ring();
    /* Unpublish first (this also turns a pending lazy open into "no ring"),
     * then make every thread's `inside` store visible and wait them out. */
    __atomic_store_n(&gpuscope_active, NULL, __ATOMIC_SEQ_CST);
    if (r == NULL) {
        return;
    }
    if (!producers_fence) {
        syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
    }
    for (struct producer * p = producers; p != NULL; p = p->link) {
        while (__atomic_load_n(&p->inside, __ATOMIC_ACQUIRE) != 0) {
            sched_yield();
        }
    }
    if (timestamp_clock == GPUSCOPE_CLOCK_TSC) {
        take_clock_pair(r);
    }
    mark_closed(r);
    free_ring(r);
}

/* Frees a ring that open gave up on before any thread could see it. */
static void discard_unpublished(struct ring * r) {
    if (r->intern_slots != MAP_FAILED) {
        munmap(r->intern_slots, r->intern_bytes);
    }
    free(r->path);
    free(r);
}

static int open_locked(const char * path, uint64_t capacity, uint64_t strings_bytes) {
    close_locked();
    install_process_hooks_once();

    char default_path[64];
    if (path == NULL || *path == '\0') {
        path = getenv("GPUSCOPE_RING");
    }
    if (path == NULL || *path == '\0') {
        snprintf(default_path, sizeof(default_path), "/dev/shm/gpuscope-%d.ring", (int)getpid());
        path = default_path;
    }
    capacity      = capacity == 0 ? GPUSCOPE_DEFAULT_CAPACITY : capacity;
    strings_bytes = strings_bytes == 0 ? GPUSCOPE_DEFAULT_STRINGS : strings_bytes;
    /* String ids are uint32 offsets into the section. */
    if (capacity > GPUSCOPE_MAX_CAPACITY || strings_bytes > UINT32_MAX - PAGE_BYTES) {
        return -EINVAL;
    }
    /* At least 16 blocks: a thread lapped while it fills one leaves the others
     * 15. Large blocks make claims rare (a claim's two shared cache lines
     * cost 2 ns of a two-thread emit at 64 records a block on the Xeon VM). */
    capacity      = round_up_pow2(capacity < GPUSCOPE_MIN_BLOCKS * MIN_BLOCK_RECORDS
                                      ? GPUSCOPE_MIN_BLOCKS * MIN_BLOCK_RECORDS : capacity);
    const uint64_t block_records  = capacity / GPUSCOPE_MIN_BLOCKS < GPUSCOPE_MAX_BLOCK_RECORDS
                                        ? capacity / GPUSCOPE_MIN_BLOCKS : GPUSCOPE_MAX_BLOCK_RECORDS;
    strings_bytes = round_up(strings_bytes < EMPTY_ENTRY_BYTES ? EMPTY_ENTRY_BYTES : strings_bytes, PAGE_BYTES);
    const uint64_t n_blocks       = capacity / block_records;
    const uint64_t writers_offset = GPUSCOPE_HEADER_SIZE;
    const uint64_t blocks_offset  = writers_offset + GPUSCOPE_MAX_WRITERS * sizeof(gpuscope_ring_writer);
    const uint64_t strings_offset = round_up(blocks_offset + n_blocks * sizeof(uint64_t), PAGE_BYTES);
    const uint64_t records_offset = strings_offset + strings_bytes;
    const uint64_t file_size      = records_offset + capacity * GPUSCOPE_RECORD_SIZE;

    struct ring * r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return -ENOMEM;
    }
    /* Sized so the table cannot fill before the section does (entries >= 8 bytes). */
    r->intern_mask  = round_up_pow2(strings_bytes / 4) - 1;
    r->intern_bytes = (size_t)(r->intern_mask + 1) * sizeof(uint64_t);
    r->intern_slots = mmap(NULL, r->intern_bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    r->path         = strdup(path);
    if (r->intern_slots == MAP_FAILED || r->path == NULL) {
        discard_unpublished(r);
        return -ENOMEM;
    }

    /* O_EXCL: whatever is at `path` already (someone's file, a symlink, a
     * live writer's ring) is refused, never truncated or followed. The lock is
     * taken before the magic is written, so a reader that sees a valid header
     * and a free lock knows the writer is gone. */
    int err = 0;
    void * base = MAP_FAILED;
    const int fd = open(path, O_CREAT | O_EXCL | O_NOFOLLOW | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        err = -errno;
    } else if (flock(fd, LOCK_EX | LOCK_NB) != 0 || fchmod(fd, 0600) != 0 ||
               ftruncate(fd, (off_t)file_size) != 0) {
        err = -errno;
    } else {
        base = mmap(NULL, (size_t)file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            err = -errno;
        }
    }
    if (err != 0) {
        if (fd >= 0) {
            unlink(path); /* the file we just created, not anything that was there */
            close(fd);
        }
        discard_unpublished(r);
        return err;
    }

    r->fd         = fd;
    r->hdr        = base;
    r->writers    = (gpuscope_ring_writer *)(void *)((char *)base + writers_offset);
    r->blocks     = (uint64_t *)(void *)((char *)base + blocks_offset);
    r->strings    = (char *)base + strings_offset;
    r->records    = (gpuscope_record *)(void *)((char *)base + records_offset);
    r->block_mask = n_blocks - 1;
    r->block_records = block_records;
    r->generation = ++generations;
    r->map_bytes  = (size_t)file_size;

    /* The file is fresh zeros: the reserved empty string entry, writer entries
     * and closed blocks are already there. */
    gpuscope_ring_header * h = r->hdr;
    h->abi_version        = GPUSCOPE_ABI_VERSION;
    h->header_size        = GPUSCOPE_HEADER_SIZE;
    h->record_size        = GPUSCOPE_RECORD_SIZE;
    h->payload_size       = GPUSCOPE_PAYLOAD_SIZE;
    h->capacity           = capacity;
    h->strings_offset     = strings_offset;
    h->strings_capacity   = strings_bytes;
    h->records_offset     = records_offset;
    h->file_size          = file_size;
    h->writers_offset     = writers_offset;
    h->blocks_offset      = blocks_offset;
    h->block_records      = (uint32_t)block_records;
    h->max_writers        = GPUSCOPE_MAX_WRITERS;
    h->clock              = (uint32_t)timestamp_clock;
    h->clock_ticks_per_s  = timestamp_clock == GPUSCOPE_CLOCK_TSC ? clock_ticks_per_s : 0;
    h->start_monotonic_ns = gpuscope_now_ns();
    h->start_realtime_ns  = realtime_ns();
    h->writer_pid         = (int32_t)getpid();
    h->state              = GPUSCOPE_STATE_OPEN;
    h->strings_used       = EMPTY_ENTRY_BYTES;
    if (timestamp_clock == GPUSCOPE_CLOCK_TSC) {
        take_clock_pair(r);
    }
    /* Magic last: a reader never trusts a half-written header. */
    __atomic_store_n(&h->magic, GPUSCOPE_MAGIC, __ATOMIC_RELEASE);

    __atomic_store_n(&gpuscope_active, r, __ATOMIC_RELEASE);
    return 0;
}

int gpuscope_ring_open(const char * path, uint64_t capacity, uint64_t strings_bytes) {
    pthread_mutex_lock(&ring_mutex);
    int rc = open_locked(path, capacity, strings_bytes);
    pthread_mutex_unlock(&ring_mutex);
    return rc;
}

void gpuscope_ring_close(void) {
    pthread_mutex_lock(&ring_mutex);
    close_locked();
    pthread_mutex_unlock(&ring_mutex);
}

const char * gpuscope_ring_path(void) {
    struct ring * r = loaded_ring();
    return r != NULL ? r->path : NULL;
}

/* The program keeps running without a ring: say why, in one line. */
static void report_refused(const char * path, int rc) {
    if (rc == -EEXIST) {
        fprintf(stderr, "gpuscope: recording off: %s already exists; the ring writer only creates a fresh file "
                        "(it never overwrites a file, follows a symlink or joins another writer's ring): "
                        "name a new path in GPUSCOPE_RING\n", path);
    } else if (rc == -EWOULDBLOCK) {
        fprintf(stderr, "gpuscope: recording off: another writer holds the ring %s\n", path);
    } else if (rc == -EINVAL) {
        fprintf(stderr, "gpuscope: recording off: GPUSCOPE_RING_CAPACITY is over the %llu records a ring may hold\n",
                (unsigned long long)GPUSCOPE_MAX_CAPACITY);
    } else {
        fprintf(stderr, "gpuscope: recording off: cannot create the ring %s: %s\n", path, strerror(-rc));
    }
}

/* First use: open the ring $GPUSCOPE_RING names, or settle on "no ring". */
static void open_from_environment(void) {
    pthread_mutex_lock(&ring_mutex);
    if (__atomic_load_n(&gpuscope_active, __ATOMIC_ACQUIRE) == &lazy_open_sentinel) {
        const char * path = getenv("GPUSCOPE_RING");
        if (path != NULL && *path != '\0') {
            /* GPUSCOPE_RING_CAPACITY: records (rounded up to a power of two); unset or invalid: default */
            const char * capacity_text = getenv("GPUSCOPE_RING_CAPACITY");
            const uint64_t capacity = capacity_text != NULL ? strtoull(capacity_text, NULL, 10) : 0;
            int rc = open_locked(path, capacity, 0);
            if (rc != 0) {
                report_refused(path, rc);
            }
        } else {
            __atomic_store_n(&gpuscope_active, NULL, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&ring_mutex);
}

/* The first use in the process opens the ring $GPUSCOPE_RING names, which
 * also settles the clock records use. */
static inline void open_on_first_use(void) {
    if (GPUSCOPE_UNLIKELY(__atomic_load_n(&gpuscope_active, __ATOMIC_RELAXED) == &lazy_open_sentinel)) {
        open_from_environment();
    }
}

/* This thread's producer inside the active ring, after open_on_first_use();
 * NULL, with nothing to leave, when there is no ring. */
static inline __attribute__((always_inline)) struct producer * enter_opened(struct ring ** ring) {
    struct producer * p = current_producer();
    if (GPUSCOPE_UNLIKELY(p == NULL)) {
        return NULL;
    }
    *ring = enter_ring(p);
    return *ring != NULL ? p : NULL;
}

static inline __attribute__((always_inline)) struct producer * enter(struct ring ** ring) {
    open_on_first_use();
    return enter_opened(ring);
}

/* ---- emit ----------------------------------------------------------------- */

/* Payloads are 16 to 40 bytes, multiples of 4: a copy of a known size is a
 * few moves, where memcpy and memset of a variable size were two calls
 * (2 of a 17 ns emit on the EPYC VM). The moves are 8 bytes wide: the hook
 * has just stored the payload field by field, and the store buffer forwards
 * a load no wider than the store it reads, where a 16-byte load over two
 * fresh 8-byte stores waits for both to reach the cache (1 ns of a 15 ns
 * emit on the Xeon VM, with the inlined thread lookup). */
static inline void copy_words(uint8_t * dst, const uint8_t * src, size_t size) {
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
        uint64_t word;
        memcpy(&word, src + i, 8);
        memcpy(dst + i, &word, 8);
    }
    if (i < size) {
        uint32_t tail;
        memcpy(&tail, src + i, 4);
        memcpy(dst + i, &tail, 4);
        i += 4;
    }
    memset(dst + i, 0, GPUSCOPE_PAYLOAD_SIZE - i);
}
#define COPY_CASE_(n) case n: copy_words(dst, src, n); break;
static inline void copy_payload(uint8_t * dst, const void * src, size_t size) {
    switch (size) {
        COPY_CASE_(16) COPY_CASE_(20) COPY_CASE_(24) COPY_CASE_(28) COPY_CASE_(32) COPY_CASE_(36)
        COPY_CASE_(GPUSCOPE_PAYLOAD_SIZE)
        default:
            size = size < GPUSCOPE_PAYLOAD_SIZE ? size : GPUSCOPE_PAYLOAD_SIZE;
            memcpy(dst, src, size);
            memset(dst + size, 0, GPUSCOPE_PAYLOAD_SIZE - size);
    }
}
#undef COPY_CASE_

/* A record the thread cannot place still takes a sequence number: the
 * reader sees the gap and counts it lost. */
static void give_up_record(struct producer * p, struct ring * r) {
    if (p->writer == NULL) {
        __atomic_fetch_add(&r->hdr->unattached_dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    __atomic_store_n(&p->writer->emitted, p->next_seq & SEQ_MASK, __ATOMIC_RELAXED);
    __atomic_store_n(&p->writer->dropped, p->writer->dropped + 1, __ATOMIC_RELAXED);
    p->next_seq++;
}

void gpuscope_emit_slow(uint16_t kind, int16_t device, const void * payload, size_t size) {
    open_on_first_use();
    /* The clock first: the TSC read is microcoded (about 8 ns on the Xeon VM,
     * most of an emit) and the work below overlaps its end (0.5 ns). */
    const uint64_t ts = record_timestamp();
    struct ring * r;
    struct producer * p = enter_opened(&r);
    if (p == NULL) {
        return;
    }
    if (GPUSCOPE_UNLIKELY(p->next == p->block_end || p->generation != r->generation)) {
        if (!take_block(p, r)) {
            give_up_record(p, r);
            leave_ring(p);
            return;
        }
    }
    gpuscope_record * rec = p->next++;
    const uint64_t seq = p->next_seq++;
    /* The count first: a reader that sees the record sees it counted. */
    __atomic_store_n(&p->writer->emitted, seq & SEQ_MASK, __ATOMIC_RELAXED);
    __atomic_store_n(&rec->seq, seq | GPUSCOPE_SEQ_BUSY, __ATOMIC_RELAXED);
    /* Readers must see BUSY before any byte of the new record. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    rec->ts_ns  = ts;
    rec->kind   = kind;
    rec->device = device;
    rec->tid    = p->tid;
    copy_payload(rec->payload, payload, size);
    /* A pair before the commit: a reader that sees the record sees a pair at or after it. Two threads may
     * both take one; that costs a slot of the history, nothing else. */
    if (GPUSCOPE_UNLIKELY(timestamp_clock == GPUSCOPE_CLOCK_TSC &&
                          (int64_t)ts >= __atomic_load_n(&r->clock_due, __ATOMIC_RELAXED))) {
        take_clock_pair(r);
    }
    __atomic_store_n(&rec->seq, seq, __ATOMIC_RELEASE);
    leave_ring(p);
}

/* ---- strings and devices ------------------------------------------------ */

/* A string to intern: bounded length and content hash, computed once. */
struct name {
    const char * s;
    size_t       len;
    uint32_t     hash;
};

/* FNV-1a: names are short and hashed once per call. */
static uint32_t content_hash(const char * s, size_t len) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    }
    return h;
}

/* False for NULL or empty: the reserved entry at id 0 is the empty string. */
static int make_name(struct name * n, const char * s, size_t max_len) {
    if (s == NULL) {
        return 0;
    }
    const char * nul = memchr(s, '\0', max_len);
    n->s    = s;
    n->len  = nul != NULL ? (size_t)(nul - s) : max_len;
    n->hash = content_hash(s, n->len);
    return n->len != 0;
}

static uint32_t entry_len(const struct ring * r, uint32_t id) {
    uint32_t len;
    memcpy(&len, r->strings + id, sizeof(len));
    return len;
}

/* Lock-free: a slot is published (release) only after its entry is complete.
 * Returns the id, or 0 with *empty_slot at the slot that ends the probe. */
static uint32_t lookup_string(const struct ring * r, const struct name * n, uint64_t * empty_slot) {
    uint64_t i = n->hash & r->intern_mask;
    for (;;) {
        const uint64_t v = __atomic_load_n(&r->intern_slots[i], __ATOMIC_ACQUIRE);
        if (v == 0) {
            *empty_slot = i;
            return 0;
        }
        const uint32_t id = (uint32_t)v;
        if ((uint32_t)(v >> 32) == n->hash && entry_len(r, id) == n->len &&
            memcmp(r->strings + id + sizeof(uint32_t), n->s, n->len) == 0) {
            return id;
        }
        i = (i + 1) & r->intern_mask;
    }
}

static uint32_t intern_locked(struct ring * r, const struct name * n) {
    uint64_t slot = 0;
    const uint32_t found = lookup_string(r, n, &slot);
    if (found != 0) {
        return found;
    }
    gpuscope_ring_header * h = r->hdr;
    const uint64_t used = h->strings_used;
    const uint64_t entry_bytes = round_up(sizeof(uint32_t) + n->len + 1, 4);
    if (entry_bytes > h->strings_capacity - used) {
        __atomic_fetch_add(&h->strings_dropped, 1, __ATOMIC_RELAXED);
        return 0;
    }
    char * entry = r->strings + used;
    memcpy(entry + sizeof(uint32_t), n->s, n->len);
    entry[sizeof(uint32_t) + n->len] = '\0';
    /* Length last: it is what commits the entry for a reader. */
    __atomic_store_n((uint32_t *)(void *)entry, (uint32_t)n->len, __ATOMIC_RELEASE);
    __atomic_store_n(&h->strings_used, used + entry_bytes, __ATOMIC_RELEASE);
    __atomic_store_n(&r->intern_slots[slot], ((uint64_t)n->hash << 32) | used, __ATOMIC_RELEASE);
    return (uint32_t)used;
}

uint32_t gpuscope_intern_n(const char * s, size_t len) {
    struct name n;
    if (!GPUSCOPE_ENABLED() || !make_name(&n, s, len)) {
        return 0;
    }
    struct ring * r;
    struct producer * p = enter(&r);
    if (p == NULL) {
        return 0;
    }
    uint64_t slot = 0;
    uint32_t id = lookup_string(r, &n, &slot);
    leave_ring(p);
    if (id == 0) {
        /* Holding the mutex keeps whatever ring is active now open. */
        pthread_mutex_lock(&ring_mutex);
        r = loaded_ring();
        id = r != NULL ? intern_locked(r, &n) : 0;
        pthread_mutex_unlock(&ring_mutex);
    }
    return id;
}

uint32_t gpuscope_intern(const char * s) {
    /* Hooks intern unconditionally: with no ring, skip strlen and hashing. */
    if (!GPUSCOPE_ENABLED() || s == NULL) {
        return 0;
    }
    return gpuscope_intern_n(s, strlen(s));
}

static int16_t find_device(const gpuscope_ring_header * h, uint32_t name_id) {
    const uint32_t n = __atomic_load_n(&h->n_devices, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++) {
        if (h->device_names[i] == name_id) {
            return (int16_t)i;
        }
    }
    return -1;
}

int16_t gpuscope_device(const char * name) {
    struct name n;
    if (!GPUSCOPE_ENABLED() || name == NULL || !make_name(&n, name, strlen(name))) {
        return -1;
    }
    struct ring * r;
    struct producer * p = enter(&r);
    if (p == NULL) {
        return -1;
    }
    uint64_t slot = 0;
    const uint32_t known = lookup_string(r, &n, &slot);
    int16_t index = known != 0 ? find_device(r->hdr, known) : -1;
    leave_ring(p);
    if (index >= 0) {
        return index;
    }
    pthread_mutex_lock(&ring_mutex);
    r = loaded_ring();
    const uint32_t name_id = r != NULL ? intern_locked(r, &n) : 0;
    if (name_id != 0) {
        gpuscope_ring_header * h = r->hdr;
        index = find_device(h, name_id);
        if (index < 0 && h->n_devices < GPUSCOPE_MAX_DEVICES) {
            index = (int16_t)h->n_devices;
            h->device_names[index] = name_id;
            __atomic_store_n(&h->n_devices, h->n_devices + 1, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&ring_mutex);
    return index;
}
