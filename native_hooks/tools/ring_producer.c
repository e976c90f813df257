/*
 * Test producer for the gpuscope ring: N threads emit MARK records whose
 * contents a reader can verify (value = thread << 40 | counter, value2 = a
 * checksum of value, name = "producer-<thread>"), optionally crashing or
 * hanging part-way so tests can look at a ring whose writer died.
 *
 *   gpuscope-ring-producer --path P --threads N --events E --capacity C
 *                          [--pace-ns NS] [--abort-after K] [--hang-after K]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "../gpuscope_ring.h"
#include "ring_file.h"

#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHECKSUM_MULTIPLIER 0x9E3779B97F4A7C15ULL

struct options {
    const char * path;
    unsigned     threads;
    uint64_t     events;
    uint64_t     capacity;
    uint64_t     pace_ns;
    uint64_t     abort_after; /* 0: never */
    uint64_t     hang_after;  /* 0: never */
};

static struct options opts = { NULL, 1, 1000, 0, 0, 0, 0 };
static pthread_barrier_t hang_barrier;

static void usage_exit(const char * prog) {
    fprintf(stderr,
            "usage: %s --path P [--threads N] [--events E per thread] [--capacity C]\n"
            "          [--pace-ns NS] [--abort-after K] [--hang-after K]\n", prog);
    exit(2);
}

static uint64_t parse_u64(const char * prog, const char * text) {
    char * end = NULL;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || *end != '\0') {
        usage_exit(prog);
    }
    return (uint64_t)v;
}

static void parse_options(int argc, char ** argv) {
    static const struct option longopts[] = {
        { "path",        required_argument, NULL, 'p' },
        { "threads",     required_argument, NULL, 't' },
        { "events",      required_argument, NULL, 'e' },
        { "capacity",    required_argument, NULL, 'c' },
        { "pace-ns",     required_argument, NULL, 'n' },
        { "abort-after", required_argument, NULL, 'a' },
        { "hang-after",  required_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
            case 'p': opts.path        = optarg; break;
            case 't': opts.threads     = (unsigned)parse_u64(argv[0], optarg); break;
            case 'e': opts.events      = parse_u64(argv[0], optarg); break;
            case 'c': opts.capacity    = parse_u64(argv[0], optarg); break;
            case 'n': opts.pace_ns     = parse_u64(argv[0], optarg); break;
            case 'a': opts.abort_after = parse_u64(argv[0], optarg); break;
            case 'h': opts.hang_after  = parse_u64(argv[0], optarg); break;
            default:  usage_exit(argv[0]);
        }
    }
    if (optind != argc || opts.threads == 0 || opts.hang_after > opts.events) {
        usage_exit(argv[0]);
    }
}

/* Sleep to an absolute deadline, so the average rate holds even when one
 * sleep overshoots. */
static void pace(struct timespec * deadline) {
    deadline->tv_nsec += (long)(opts.pace_ns % 1000000000u);
    deadline->tv_sec  += (time_t)(opts.pace_ns / 1000000000u) + deadline->tv_nsec / 1000000000;
    deadline->tv_nsec %= 1000000000;
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, deadline, NULL);
}

static void * produce(void * arg) {
    const uint64_t index = (uint64_t)(uintptr_t)arg;
    char name[32];
    snprintf(name, sizeof(name), "producer-%" PRIu64, index);

    gpuscope_ev_mark ev;
    memset(&ev, 0, sizeof(ev));
    ev.name = gpuscope_intern(name);

    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    for (uint64_t k = 0; k < opts.events; k++) {
        const uint64_t value = (index << 40) | k;
        ev.value  = (int64_t)value;
        ev.value2 = (int64_t)(value * CHECKSUM_MULTIPLIER);
        GPUSCOPE_EMIT(MARK, -1, ev);

        const uint64_t done = k + 1;
        if (index == 0 && done == opts.abort_after) {
            abort();
        }
        if (done == opts.hang_after) {
            /* The serial thread prints once every thread has written its share. */
            if (pthread_barrier_wait(&hang_barrier) == PTHREAD_BARRIER_SERIAL_THREAD) {
                printf("READY %" PRIu64 "\n", opts.hang_after * opts.threads);
                fflush(stdout);
            }
            for (;;) {
                pause();
            }
        }
        if (opts.pace_ns != 0) {
            pace(&deadline);
        }
    }
    return NULL;
}

int main(int argc, char ** argv) {
    parse_options(argc, argv);

    int rc = gpuscope_ring_open(opts.path, opts.capacity, 0);
    if (rc != 0) {
        fprintf(stderr, "cannot open ring %s: %s\n", opts.path ? opts.path : "(default)", strerror(-rc));
        return 1;
    }
    char * path = strdup(gpuscope_ring_path());
    pthread_barrier_init(&hang_barrier, NULL, opts.threads);

    pthread_t * threads = calloc(opts.threads, sizeof(*threads));
    for (unsigned i = 0; i < opts.threads; i++) {
        if (pthread_create(&threads[i], NULL, produce, (void *)(uintptr_t)i) != 0) {
            fprintf(stderr, "cannot start thread %u\n", i);
            return 1;
        }
    }
    for (unsigned i = 0; i < opts.threads; i++) {
        pthread_join(threads[i], NULL);
    }
    gpuscope_ring_close();

    printf("{\"written\": %" PRIu64 ", \"writer_dropped\": %" PRIu64 "}\n",
           opts.events * opts.threads, read_ring_dropped(path));
    free(threads);
    free(path);
    return 0;
}
