/*
 * gpuscope flight-recorder ring: a file-backed mmap region that many threads
 * (and the engine's hooks) write fixed-size records into, lock-free, and that
 * a reader in this or another process drains, even after the writer died.
 *
 * File layout (all offsets from the start of the file, little-endian):
 *   [0, 4096)                     gpuscope_ring_header
 *   [writers_offset, +max_writers * 64)  one gpuscope_ring_writer per producer thread
 *   [blocks_offset, +n_blocks * 8)       one block state per block of records
 *   [strings_offset, +strings_capacity)  interned strings: entries of
 *                                 { uint32_t len_committed; char bytes[len]; '\0' }
 *                                 padded to 4 bytes; a string id is the entry's
 *                                 offset inside the section (0 is "no string":
 *                                 the section starts with a reserved empty entry)
 *   [records_offset, +capacity * GPUSCOPE_RECORD_SIZE)  records, in blocks of
 *                                 block_records
 *
 * Who writes where: each producer thread owns a writer entry (claimed once)
 * and one block at a time. It takes a block with one fetch-add on
 * block_cursor (ticket t, block t mod n_blocks) and a CAS of the block's
 * state from "closed" to OPEN | key, where key = writer << 47 | s0 and s0 is
 * the writer's sequence number of the block's first record; a block still
 * OPEN (its owner was lapped) is not taken, so no block has two writers.
 * Record i of the block then has seq = key + i: the producer stores
 * seq | BUSY, writes the record, stores seq with release order, all plain
 * stores. The writer entry's `emitted` is the last sequence number it handed
 * out, so a reader knows how many records each thread wrote; numbers missing
 * from what it read are lost (overwritten, or given up by a lapped thread).
 *
 * Timestamps: with an invariant TSC the records carry raw TSC ticks and the
 * header carries calibration pairs (ticks, CLOCK_MONOTONIC ns) taken at open,
 * then by the first emit a quarter of the ring's age (1 ms to
 * GPUSCOPE_CLOCK_REFRESH_NS) after the newest, and at close; the reader converts. Elsewhere records carry CLOCK_MONOTONIC ns.
 */
#ifndef GPUSCOPE_RING_H
#define GPUSCOPE_RING_H

#include <stddef.h>
#include <stdint.h>
#include "gpuscope_events.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GPUSCOPE_MAGIC            0x45504F4353555047ULL /* "GPUSCOPE" little-endian */
#define GPUSCOPE_HEADER_SIZE      4096
#define GPUSCOPE_SEQ_BUSY         (1ULL << 63)
#define GPUSCOPE_MAX_DEVICES      64
#define GPUSCOPE_DEFAULT_CAPACITY (1u << 20)         /* records: 64 MiB */
#define GPUSCOPE_DEFAULT_STRINGS  (1u << 20)         /* bytes */
#define GPUSCOPE_MAX_CAPACITY     (1ULL << 28)       /* records (16 GiB): writer and reader refuse more */
#define GPUSCOPE_MAX_BLOCK_RECORDS 256               /* records per block (16 KiB) in a ring of 16 blocks or more */
#define GPUSCOPE_MIN_BLOCKS       16                 /* a smaller ring has smaller blocks, down to 16 records */
#define GPUSCOPE_MAX_WRITERS      1024               /* producer threads a ring can tell apart */
#define GPUSCOPE_WRITER_SHIFT     47                 /* seq = writer << 47 | sequence number */
#define GPUSCOPE_BLOCK_OPEN       (1ULL << 63)       /* block state: its owner may still write */
#define GPUSCOPE_CLOCK_PAIRS      64                 /* calibration pairs the header keeps */
#define GPUSCOPE_CLOCK_REFRESH_NS 250000000          /* a new pair at least this often while writing */

/* What a record's ts_ns holds. */
enum gpuscope_ring_clock {
    GPUSCOPE_CLOCK_MONOTONIC = 1, /* CLOCK_MONOTONIC nanoseconds */
    GPUSCOPE_CLOCK_TSC       = 2, /* raw invariant TSC ticks: convert with the header's clock pairs */
};

enum gpuscope_ring_state {
    GPUSCOPE_STATE_OPEN    = 1,
    GPUSCOPE_STATE_CLOSED  = 2, /* writer closed the ring cleanly */
    GPUSCOPE_STATE_CRASHED = 3, /* writer took a fatal signal */
};

/* Every field is naturally aligned; the reader checks them all before use.
 * The fields before `state` are written once, before the magic, and never
 * change: a reader compares them on every read to notice a ring re-created
 * or overwritten under it. */
typedef struct gpuscope_ring_header {
    uint64_t magic;
    uint32_t abi_version;
    uint32_t header_size;
    uint32_t record_size;
    uint32_t payload_size;
    uint64_t capacity;             /* records, a power of two, at least one block */
    uint64_t strings_offset;
    uint64_t strings_capacity;     /* bytes */
    uint64_t records_offset;
    uint64_t file_size;
    uint64_t writers_offset;       /* max_writers writer entries */
    uint64_t blocks_offset;        /* capacity / block_records block states */
    uint32_t block_records;        /* records per block, a power of two: capacity / 16, 16 to 256 */
    uint32_t max_writers;
    uint32_t clock;                /* enum gpuscope_ring_clock */
    uint32_t reserved;
    int64_t  clock_ticks_per_s;    /* TSC rate measured over 2 ms at open (0: clock is monotonic); converts
                                    * ticks past the newest pair while a single pair exists */
    int64_t  start_monotonic_ns;   /* taken together with start_realtime_ns */
    int64_t  start_realtime_ns;
    int32_t  writer_pid;
    uint32_t state;                /* enum gpuscope_ring_state */
    int32_t  crash_signal;         /* signal that marked the ring crashed, else 0 */
    uint32_t n_devices;            /* entries used in device_names */
    uint64_t block_cursor;         /* atomic: block tickets handed out so far */
    uint64_t strings_used;         /* atomic: bytes of the string section in use */
    uint64_t strings_dropped;      /* atomic: interns refused because the section was full */
    uint64_t unattached_dropped;   /* atomic: records of threads that found no free writer entry */
    uint64_t clock_pairs_taken;    /* atomic: calibration pairs taken; pair n is at n % GPUSCOPE_CLOCK_PAIRS */
    uint64_t clock_pair_seq[GPUSCOPE_CLOCK_PAIRS];   /* n + 1 once pair n is complete, 0 while written */
    int64_t  clock_pair_ticks[GPUSCOPE_CLOCK_PAIRS]; /* TSC ticks ... */
    int64_t  clock_pair_ns[GPUSCOPE_CLOCK_PAIRS];    /* ... and CLOCK_MONOTONIC ns read together */
    uint32_t device_names[GPUSCOPE_MAX_DEVICES]; /* device index -> string id */
} gpuscope_ring_header;

/* One producer thread's entry; 64 bytes, so no two threads share a line.
 * Entries outlive their threads: a new thread may take a free one and goes
 * on counting from its `emitted`. */
typedef struct gpuscope_ring_writer {
    uint64_t emitted;              /* last sequence number handed out (records written or given up) */
    uint64_t dropped;              /* of those, records given up: every block it tried was still open */
    uint32_t in_use;               /* atomic: 1 while a thread owns the entry */
    uint32_t tid;                  /* its last owner's kernel thread id */
    uint64_t padding[5];
} gpuscope_ring_writer;

/* Create a fresh ring at `path` (NULL: $GPUSCOPE_RING, else
 * /dev/shm/gpuscope-<pid>.ring) with `capacity` records (rounded up to a power
 * of two; 0: default) and `strings_bytes` of string section (0: default),
 * and make it the process's active ring. Installs the crash handlers.
 * The writer never opens what is already at `path` (a file, a symlink,
 * another writer's ring: -EEXIST), so it cannot clobber anything; it holds an
 * exclusive flock on the ring while it is open, which readers take as "the
 * writer is alive". Returns 0 or -errno. */
int  gpuscope_ring_open(const char * path, uint64_t capacity, uint64_t strings_bytes);
/* Mark the active ring closed cleanly, unmap it and stop recording. */
void gpuscope_ring_close(void);
/* Path of the active ring, or NULL. */
const char * gpuscope_ring_path(void);

/* Intern a string (or a length-bounded one): returns its id, 0 when no ring
 * is open, the string is NULL, or the section is full (counted in the header). */
uint32_t gpuscope_intern(const char * s);
uint32_t gpuscope_intern_n(const char * s, size_t len);
/* Ring device index for a device name (registered once), -1 when no ring. */
int16_t  gpuscope_device(const char * name);

/* Write one record. Callers normally use GPUSCOPE_EMIT, which costs a single
 * predictable branch when no ring is open. */
void gpuscope_emit_slow(uint16_t kind, int16_t device, const void * payload, size_t size);

/* Non-NULL while a ring is active; also non-NULL (a sentinel) before the first
 * event, so that the first emit checks $GPUSCOPE_RING once. */
extern void * volatile gpuscope_active;

/* A relaxed atomic load is the same single mov as the volatile read, but it
 * does not race with open/close under the C11/C++11 memory model (TSan). */
#if defined(__GNUC__)
#  define GPUSCOPE_UNLIKELY(x) __builtin_expect(!!(x), 0)
#  define GPUSCOPE_ACTIVE()    __atomic_load_n(&gpuscope_active, __ATOMIC_RELAXED)
#else
#  define GPUSCOPE_UNLIKELY(x) (x)
#  define GPUSCOPE_ACTIVE()    gpuscope_active
#endif

#define GPUSCOPE_ENABLED() GPUSCOPE_UNLIKELY(GPUSCOPE_ACTIVE() != NULL)

/* gpuscope_payload_<NAME>: kind <NAME>'s payload type, reachable from the one name GPUSCOPE_EMIT gets. */
#define GPUSCOPE_PAYLOAD_TYPEDEF_(NAME, name) typedef gpuscope_ev_##name gpuscope_payload_##NAME;
GPUSCOPE_KINDS(GPUSCOPE_PAYLOAD_TYPEDEF_)
#undef GPUSCOPE_PAYLOAD_TYPEDEF_

/* &ev as a const type *; ev of any other type is a compile error, not the
 * warning an incompatible pointer argument gets in C. */
#ifdef __cplusplus
#  define GPUSCOPE_CHECKED_PAYLOAD_(type, ev) static_cast<const type *>(&(ev))
#else
#  define GPUSCOPE_CHECKED_PAYLOAD_(type, ev) _Generic((ev), type: &(ev))
#endif

/* GPUSCOPE_EMIT(SYNC, device, ev) writes ev, a gpuscope_ev_sync lvalue, as a
 * GPUSCOPE_KIND_SYNC record. `kind` is only ever pasted, so a macro of the
 * same name (SYNC, COPY) elsewhere cannot change it. */
#define GPUSCOPE_EMIT(kind, device, ev) \
    do { \
        if (GPUSCOPE_ENABLED()) \
            gpuscope_emit_slow(GPUSCOPE_KIND_##kind, (int16_t)(device), \
                               GPUSCOPE_CHECKED_PAYLOAD_(gpuscope_payload_##kind, ev), \
                               sizeof(gpuscope_payload_##kind)); \
    } while (0)

/* Nanoseconds on CLOCK_MONOTONIC (what record timestamps use). */
int64_t gpuscope_now_ns(void);

#ifdef __cplusplus
}
#endif

#endif /* GPUSCOPE_RING_H */
