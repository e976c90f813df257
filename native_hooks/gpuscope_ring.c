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

#define PAGE_BYTES        4096u
#define EMPTY_ENTRY_BYTES 8u                    /* reserved entry at id 0: len 0, '\0', padding */
#define INSIDE_STRIPES    64

/* Process-local view of one open ring. */
struct ring {
    gpuscope_ring_header * hdr;
    gpuscope_record *      records;
    char *                 strings;
    uint64_t               mask;         /* capacity - 1 */
    size_t                 map_bytes;
    uint64_t *             intern_slots; /* (content hash << 32) | string id; 0 = empty */
    uint64_t               intern_mask;
    size_t                 intern_bytes;
    char *                 path;
    int                    fd;           /* holds the ring's flock until close */
};

/* Address of this byte is the "not looked at $GPUSCOPE_RING yet" sentinel. */
static char lazy_open_sentinel;

void * volatile gpuscope_active = &lazy_open_sentinel;

/* Serializes open, close, lazy open and every insertion (interns, devices). */
static pthread_mutex_t ring_mutex = PTHREAD_MUTEX_INITIALIZER;

/* Threads inside emit/intern/device with a ring pointer in hand, so that
 * close can wait for them before unmapping. Striped by thread id over
 * separate cache lines: one shared counter measured +30% p99 emit cost with
 * two producers on different cores. */
struct inside_stripe {
    _Alignas(64) uint64_t threads;
};
static struct inside_stripe inside[INSIDE_STRIPES];

static int process_hooks_installed;

static const int crash_signals[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT };
#define N_CRASH_SIGNALS (sizeof(crash_signals) / sizeof(crash_signals[0]))
static struct sigaction previous_actions[N_CRASH_SIGNALS];

/* initial-exec: one %fs-relative load instead of a __tls_get_addr call in a
 * shared library (2 ns of a 36 ns emit); 4 bytes of the static TLS surplus
 * that glibc keeps for libraries loaded with dlopen. */
static _Thread_local uint32_t cached_tid __attribute__((tls_model("initial-exec")));

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

static uint32_t current_tid(void) {
    uint32_t tid = cached_tid;
    if (GPUSCOPE_UNLIKELY(tid == 0)) {
        tid = (uint32_t)syscall(SYS_gettid);
        cached_tid = tid;
    }
    return tid;
}

/* A forked child's one thread has a new id but inherits the parent's cache,
 * and the parent's threads that were inside a ring do not exist here. */
static void reset_in_child(void) {
    cached_tid = 0;
    memset(inside, 0, sizeof(inside));
}

/* The real ring behind gpuscope_active, or NULL (no ring, or not opened yet). */
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
        mark_closed(r);
    }
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
     * then wait out the threads that took the pointer before. seq_cst here
     * and in enter_ring: either they see NULL or we see them inside. */
    __atomic_store_n(&gpuscope_active, NULL, __ATOMIC_SEQ_CST);
    if (r == NULL) {
        return;
    }
    for (size_t i = 0; i < INSIDE_STRIPES; i++) {
        while (__atomic_load_n(&inside[i].threads, __ATOMIC_SEQ_CST) != 0) {
            sched_yield();
        }
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
    capacity      = round_up_pow2(capacity);
    strings_bytes = round_up(strings_bytes < EMPTY_ENTRY_BYTES ? EMPTY_ENTRY_BYTES : strings_bytes, PAGE_BYTES);
    const uint64_t strings_offset = GPUSCOPE_HEADER_SIZE;
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

    r->fd        = fd;
    r->hdr       = base;
    r->strings   = (char *)base + strings_offset;
    r->records   = (gpuscope_record *)(void *)((char *)base + records_offset);
    r->mask      = capacity - 1;
    r->map_bytes = (size_t)file_size;

    /* The file is fresh zeros: the reserved empty string entry is already there. */
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
    h->start_monotonic_ns = gpuscope_now_ns();
    h->start_realtime_ns  = realtime_ns();
    h->writer_pid         = (int32_t)getpid();
    h->state              = GPUSCOPE_STATE_OPEN;
    h->strings_used       = EMPTY_ENTRY_BYTES;
    /* Magic last: a reader never trusts a half-written header. */
    __atomic_store_n(&h->magic, GPUSCOPE_MAGIC, __ATOMIC_RELEASE);

    install_process_hooks_once();
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

/* The active ring (opening $GPUSCOPE_RING on first use), kept mapped until
 * leave_ring(); NULL, with nothing to leave, when there is none. Never take
 * ring_mutex while inside: close waits for the threads inside with it held. */
static struct ring * enter_ring(uint32_t tid) {
    if (GPUSCOPE_UNLIKELY(__atomic_load_n(&gpuscope_active, __ATOMIC_RELAXED) == &lazy_open_sentinel)) {
        open_from_environment();
    }
    uint64_t * mine = &inside[tid % INSIDE_STRIPES].threads;
    __atomic_fetch_add(mine, 1, __ATOMIC_SEQ_CST);
    struct ring * r = __atomic_load_n(&gpuscope_active, __ATOMIC_SEQ_CST);
    if (r == NULL) {
        __atomic_fetch_sub(mine, 1, __ATOMIC_RELEASE);
    }
    return r;
}

static void leave_ring(uint32_t tid) {
    __atomic_fetch_sub(&inside[tid % INSIDE_STRIPES].threads, 1, __ATOMIC_RELEASE);
}

/* ---- emit ----------------------------------------------------------------- */

void gpuscope_emit_slow(uint16_t kind, int16_t device, const void * payload, size_t size) {
    const uint32_t tid = current_tid();
    struct ring * r = enter_ring(tid);
    if (r == NULL) {
        return;
    }
    const int64_t ts = gpuscope_now_ns();
    const uint64_t ticket = __atomic_fetch_add(&r->hdr->write_cursor, 1, __ATOMIC_RELAXED);
    const uint64_t mine = ticket + 1;
    gpuscope_record * rec = &r->records[ticket & r->mask];

    /* Take the slot only from a committed older record. A newer ticket there
     * means we were lapped; a busy slot belongs to another producer mid-write.
     * Either way our record is the one given up, so no slot has two writers. */
    uint64_t seen = __atomic_load_n(&rec->seq, __ATOMIC_RELAXED);
    do {
        if ((seen & GPUSCOPE_SEQ_BUSY) != 0 || seen > mine) {
            __atomic_fetch_add(&r->hdr->writer_dropped, 1, __ATOMIC_RELAXED);
            leave_ring(tid);
            return;
        }
    } while (!__atomic_compare_exchange_n(&rec->seq, &seen, mine | GPUSCOPE_SEQ_BUSY, 0,
                                          __ATOMIC_ACQUIRE, __ATOMIC_RELAXED));
    /* Readers must see BUSY before any byte of the new record. */
    __atomic_thread_fence(__ATOMIC_RELEASE);

    if (size > GPUSCOPE_PAYLOAD_SIZE) {
        size = GPUSCOPE_PAYLOAD_SIZE;
    }
    rec->ts_ns  = (uint64_t)ts;
    rec->kind   = kind;
    rec->device = device;
    rec->tid    = tid;
    memcpy(rec->payload, payload, size);
    memset(rec->payload + size, 0, GPUSCOPE_PAYLOAD_SIZE - size);
    __atomic_store_n(&rec->seq, mine, __ATOMIC_RELEASE);
    leave_ring(tid);
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
    const uint32_t tid = current_tid();
    struct ring * r = enter_ring(tid);
    if (r == NULL) {
        return 0;
    }
    uint64_t slot = 0;
    uint32_t id = lookup_string(r, &n, &slot);
    leave_ring(tid);
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
    const uint32_t tid = current_tid();
    struct ring * r = enter_ring(tid);
    if (r == NULL) {
        return -1;
    }
    uint64_t slot = 0;
    const uint32_t known = lookup_string(r, &n, &slot);
    int16_t index = known != 0 ? find_device(r->hdr, known) : -1;
    leave_ring(tid);
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
