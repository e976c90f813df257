/*
 * gpuscope hook helpers: what the engine's hook sites call.
 *
 * The patch series (native_hooks/patches/) inserts short hooks into ggml and
 * llama.cpp; each computes its payload's inputs and calls one helper here. The
 * helpers hold the logic the sites share: thread-local tags a call site sets
 * for the syncs and allocations below it (sync reason, split id, buffer owner),
 * the device index of a backend, buffer or buffer type, timing, deduplication.
 *
 * Cost rule: every site tests GPUSCOPE_ENABLED() first (one predictable branch
 * when no ring is open) and calls a helper only inside that branch.
 */
#ifndef GPUSCOPE_HOOKS_H
#define GPUSCOPE_HOOKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ggml.h"
#include "ggml-backend.h"
#include "gpuscope_ring.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- thread-local tags ---------------------------------------------------
 * Each setter returns the previous value for the matching restore. */

/* Reason the next syncs on this thread happen for. With keep_outer, a reason
 * an outer call site already set stays (a default for generic paths). */
uint8_t gpuscope_sync_reason_set(uint8_t reason, bool keep_outer);
void    gpuscope_sync_reason_restore(uint8_t previous);

/* Owner of the buffers allocated next on this thread (enum gpuscope_buffer_owner). */
uint8_t gpuscope_owner_set(uint8_t owner);
void    gpuscope_owner_restore(uint8_t previous);

/* FA plans and op placements are reported once per ring; forget those reported so far, so that the next ones
 * are reported again (a kernel profiler starting: its launches are matched to the plans made while it runs). */
void gpuscope_plans_forget(void);

/* ---- devices -------------------------------------------------------------- */

/* Ring device index of a ggml device (NULL: the CPU, as for CPU buffer types);
 * emits DEVICE_INFO the first time a ring sees the device. -1 when no ring. */
int16_t gpuscope_dev_index(ggml_backend_dev_t dev);
int16_t gpuscope_backend_index(ggml_backend_t backend);

/* ---- buffers -------------------------------------------------------------- */

/* Allocation sites nest (a meta buffer allocates its parts, a pinned-host
 * buffer type may fall back to the CPU one): take a mark before allocating and
 * pass it after, so that only the innermost real buffer is reported. */
uint32_t gpuscope_alloc_mark(void);
void     gpuscope_buffer_alloc(ggml_backend_buffer_t buffer, uint32_t mark, bool from_host_ptr);
void     gpuscope_buffer_free(ggml_backend_buffer_t buffer);
void     gpuscope_buffer_usage(ggml_backend_buffer_t buffer);

/* ---- graph allocator and scheduler --------------------------------------- */

void gpuscope_gallocr_realloc(const void * galloc, uint8_t reason, uint32_t old_count, uint32_t new_count,
                              const struct ggml_tensor * tensor, int src_index, size_t size_max, size_t size_needed);
void gpuscope_gallocr_buffer(const void * galloc, ggml_backend_buffer_type_t buft, int buffer_id,
                             size_t old_size, size_t new_size, int n_chunks);
void gpuscope_sched_reserve(const void * sched, uint8_t trigger, bool backend_ids_changed,
                            int64_t t_begin, int64_t t_synced, int n_splits, int n_nodes);

/* ---- syncs, splits, copies ---------------------------------------------- */

/* A sync that began at t_begin just ended; backend NULL for event syncs (dev given). */
void    gpuscope_sync_done(uint8_t what, ggml_backend_t backend, ggml_backend_dev_t dev, int64_t t_begin);
/* Split boundaries: enter tags this thread's syncs with the split id and returns the previous id. */
int32_t gpuscope_split_enter(const void * sched, int32_t split_id, ggml_backend_t backend,
                             int n_inputs, int n_nodes, int cur_copy);
void    gpuscope_split_exit(const void * sched, int32_t split_id, ggml_backend_t backend, int64_t t_begin,
                            int32_t previous_split_id);
/* Eval-callback path: one graph view computed (needed: the callback asked for its last node). */
void    gpuscope_eval_view(bool needed);
void    gpuscope_copy_done(const struct ggml_tensor * tensor, uint64_t bytes, uint8_t mode,
                           ggml_backend_t src, ggml_backend_t dst, int64_t t_begin);

/* Tensor split (the meta backend): one device's part of a subgraph submitted, and one collective all-reduce of
 * nodes[j] on backends[j] (a COPY per device towards the next one, the call's host time shared among them). */
void    gpuscope_meta_part_done(const void * meta, size_t subgraph, size_t n_subgraphs, ggml_backend_t backend,
                                int n_nodes, int64_t t_begin);
void    gpuscope_allreduce_done(struct ggml_tensor * const * nodes, const ggml_backend_t * backends, size_t n,
                                int64_t t_begin);

/* ---- placement and FlashAttention routes -------------------------------- */

/* Ops of `graph` that the scheduler placed on another device than their layer's
 * (layer from the `name-<il>` suffix llama.cpp gives tensors); deduplicated. */
typedef ggml_backend_dev_t (*gpuscope_layer_device_fn)(void * user_data, int il);
void gpuscope_op_placements(ggml_backend_sched_t sched, struct ggml_cgraph * graph, int n_layer,
                            gpuscope_layer_device_fn layer_device, void * user_data);

/* One FlashAttention kernel selection (enum gpuscope_fa_kernel / _reason / _caller); deduplicated. */
void gpuscope_fa_plan(ggml_backend_dev_t dev, uint32_t compute_capability, const struct ggml_tensor * dst,
                      int kernel, uint8_t reason, uint8_t caller);

/* ---- decode steps (one state per llama_context) ------------------------- */

typedef struct gpuscope_step_state {
    uint64_t step;                 /* decode in flight, 0 when none */
    int64_t  t_begin_ns;
    uint32_t n_ubatches;
    uint64_t submitted_step;       /* returned to the caller, not yet synchronized */
    int64_t  submitted_t_begin_ns;
} gpuscope_step_state;

void gpuscope_decode_begin(gpuscope_step_state * st, const void * ctx, uint32_t n_tokens, uint32_t n_outputs,
                           const int32_t * pos, const int32_t * n_seq_id, int32_t * const * seq_id,
                           uint32_t kv_used);
void gpuscope_decode_ubatch(gpuscope_step_state * st, uint32_t n_tokens, uint32_t n_seqs, uint32_t n_outputs,
                            uint32_t n_kv, uint32_t n_nodes, bool graph_reused);
void gpuscope_decode_submitted(gpuscope_step_state * st, int status);
void gpuscope_decode_synced(gpuscope_step_state * st, int64_t t_wait_begin);

#ifdef __cplusplus
}

/* Scope guards for the C++ sites: they cost one branch when no ring is open. */

struct gpuscope_sync_reason_scope {
    explicit gpuscope_sync_reason_scope(uint8_t reason, bool keep_outer = false)
        : active(GPUSCOPE_ENABLED()), previous(active ? gpuscope_sync_reason_set(reason, keep_outer) : 0) {}
    ~gpuscope_sync_reason_scope() { if (active) gpuscope_sync_reason_restore(previous); }
    gpuscope_sync_reason_scope(const gpuscope_sync_reason_scope &) = delete;
    gpuscope_sync_reason_scope & operator=(const gpuscope_sync_reason_scope &) = delete;
    const bool    active;
    const uint8_t previous;
};

struct gpuscope_owner_scope {
    explicit gpuscope_owner_scope(uint8_t owner)
        : active(GPUSCOPE_ENABLED()), previous(active ? gpuscope_owner_set(owner) : 0) {}
    ~gpuscope_owner_scope() { if (active) gpuscope_owner_restore(previous); }
    gpuscope_owner_scope(const gpuscope_owner_scope &) = delete;
    gpuscope_owner_scope & operator=(const gpuscope_owner_scope &) = delete;
    const bool    active;
    const uint8_t previous;
};

/* One synchronize call (enum gpuscope_sync_what): SYNC with its duration when the scope ends. */
struct gpuscope_sync_scope {
    gpuscope_sync_scope(uint8_t what, ggml_backend_t backend, ggml_backend_dev_t dev)
        : active(GPUSCOPE_ENABLED()), what(what), backend(backend), dev(dev), t_begin(active ? gpuscope_now_ns() : 0) {}
    ~gpuscope_sync_scope() { if (active) gpuscope_sync_done(what, backend, dev, t_begin); }
    gpuscope_sync_scope(const gpuscope_sync_scope &) = delete;
    gpuscope_sync_scope & operator=(const gpuscope_sync_scope &) = delete;
    const bool               active;
    const uint8_t            what;
    const ggml_backend_t     backend;
    const ggml_backend_dev_t dev;
    const int64_t            t_begin;
};

/* One scheduler split: SPLIT_BEGIN now, SPLIT_END when the iteration ends. */
struct gpuscope_split_scope {
    gpuscope_split_scope(const void * sched, int32_t split_id, ggml_backend_t backend, int n_inputs, int n_nodes,
                         int cur_copy)
        : active(GPUSCOPE_ENABLED()), sched(sched), split_id(split_id), backend(backend),
          t_begin(active ? gpuscope_now_ns() : 0),
          previous(active ? gpuscope_split_enter(sched, split_id, backend, n_inputs, n_nodes, cur_copy) : -1) {}
    ~gpuscope_split_scope() { if (active) gpuscope_split_exit(sched, split_id, backend, t_begin, previous); }
    gpuscope_split_scope(const gpuscope_split_scope &) = delete;
    gpuscope_split_scope & operator=(const gpuscope_split_scope &) = delete;
    const bool          active;
    const void *        sched;
    const int32_t       split_id;
    const ggml_backend_t backend;
    const int64_t       t_begin;
    const int32_t       previous;
};

/* One cross-backend input copy: COPY when the scope ends; a site may add bytes or change the mode. */
struct gpuscope_copy_scope {
    gpuscope_copy_scope(const struct ggml_tensor * tensor, uint64_t bytes, uint8_t mode, ggml_backend_t src,
                        ggml_backend_t dst)
        : active(GPUSCOPE_ENABLED()), tensor(tensor), bytes(bytes), mode(mode), src(src), dst(dst),
          t_begin(active ? gpuscope_now_ns() : 0) {}
    ~gpuscope_copy_scope() { if (active) gpuscope_copy_done(tensor, bytes, mode, src, dst, t_begin); }
    gpuscope_copy_scope(const gpuscope_copy_scope &) = delete;
    gpuscope_copy_scope & operator=(const gpuscope_copy_scope &) = delete;
    const bool                 active;
    const struct ggml_tensor * tensor;
    uint64_t                   bytes;
    uint8_t                    mode;
    const ggml_backend_t       src;
    const ggml_backend_t       dst;
    const int64_t              t_begin;
};

/* One device's part of a meta backend's subgraph: META_PART when the iteration ends. */
struct gpuscope_meta_part_scope {
    gpuscope_meta_part_scope(const void * meta, size_t subgraph, size_t n_subgraphs, ggml_backend_t backend,
                             int n_nodes)
        : active(GPUSCOPE_ENABLED()), meta(meta), subgraph(subgraph), n_subgraphs(n_subgraphs), backend(backend),
          n_nodes(n_nodes), t_begin(active ? gpuscope_now_ns() : 0) {}
    ~gpuscope_meta_part_scope() {
        if (active) gpuscope_meta_part_done(meta, subgraph, n_subgraphs, backend, n_nodes, t_begin);
    }
    gpuscope_meta_part_scope(const gpuscope_meta_part_scope &) = delete;
    gpuscope_meta_part_scope & operator=(const gpuscope_meta_part_scope &) = delete;
    const bool           active;
    const void *         meta;
    const size_t         subgraph;
    const size_t         n_subgraphs;
    const ggml_backend_t backend;
    const int            n_nodes;
    const int64_t        t_begin;
};

/* A scheduler re-reserve: syncs tagged REALLOC, SCHED_RESERVE when the scope ends.
 * n_splits / n_nodes point at the scheduler's counters, read at the end. */
struct gpuscope_reserve_scope {
    gpuscope_reserve_scope(const void * sched, uint8_t trigger, bool backend_ids_changed, const int * n_splits,
                           const int * n_nodes)
        : active(GPUSCOPE_ENABLED()), sched(sched), trigger(trigger), backend_ids_changed(backend_ids_changed),
          n_splits(n_splits), n_nodes(n_nodes), t_begin(active ? gpuscope_now_ns() : 0), t_synced(t_begin),
          reason(GPUSCOPE_SYNC_REASON_REALLOC) {}
    /* The backends are synchronized: what follows is the reserve itself. */
    void synced() { if (active) t_synced = gpuscope_now_ns(); }
    ~gpuscope_reserve_scope() {
        if (active) gpuscope_sched_reserve(sched, trigger, backend_ids_changed, t_begin, t_synced, *n_splits, *n_nodes);
    }
    gpuscope_reserve_scope(const gpuscope_reserve_scope &) = delete;
    gpuscope_reserve_scope & operator=(const gpuscope_reserve_scope &) = delete;
    const bool                 active;
    const void *               sched;
    const uint8_t              trigger;
    const bool                 backend_ids_changed;
    const int *                n_splits;
    const int *                n_nodes;
    const int64_t              t_begin;
    int64_t                    t_synced;
    gpuscope_sync_reason_scope reason;
};

#endif /* __cplusplus */

#endif /* GPUSCOPE_HOOKS_H */
