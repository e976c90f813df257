/*
 * gpuscope flight-recorder ring: a file-backed mmap region that many threads
 * (and the engine's hooks) write fixed-size records into, lock-free, and that
 * a reader in this or another process drains, even after the writer died.
 *
 * File layout (all offsets from the start of the file, little-endian):
 *   [0, 4096)                     gpuscope_ring_header
 *   [strings_offset, +strings_capacity)  interned strings: entries of
 *                                 { uint32_t len_committed; char bytes[len]; '\0' }
 *                                 padded to 4 bytes; a string id is the entry's
 *                                 offset inside the section (0 is "no string":
 *                                 the section starts with a reserved empty entry)
 *   [records_offset, +capacity * GPUSCOPE_RECORD_SIZE)  records
 *
 * Commit protocol per record (ticket t = fetch_add(write_cursor, 1),
 * slot = t & (capacity - 1)): the producer stores seq = (t+1) | BUSY, writes the
 * record, then stores seq = t+1 with release order. A reader takes a record
 * only when seq == t+1 both before and after copying it.
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
    uint64_t capacity;             /* records, a power of two */
    uint64_t strings_offset;
    uint64_t strings_capacity;     /* bytes */
    uint64_t records_offset;
    uint64_t file_size;
    int64_t  start_monotonic_ns;   /* taken together with start_realtime_ns */
    int64_t  start_realtime_ns;
    int32_t  writer_pid;
    uint32_t state;                /* enum gpuscope_ring_state */
    int32_t  crash_signal;         /* signal that marked the ring crashed, else 0 */
    uint32_t n_devices;            /* entries used in device_names */
    uint64_t write_cursor;         /* atomic: tickets handed out so far */
    uint64_t strings_used;         /* atomic: bytes of the string section in use */
    uint64_t strings_dropped;      /* atomic: interns refused because the section was full */
    uint64_t writer_dropped;       /* atomic: records a lapped producer gave up */
    uint32_t device_names[GPUSCOPE_MAX_DEVICES]; /* device index -> string id */
} gpuscope_ring_header;

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
