/*
 * gpuscope hook helpers (see gpuscope_hooks.h). Compiled into ggml-base next
 * to the ring writer; every helper is only called while a ring may be open.
 */
#include "gpuscope_hooks.h"

#include "ggml-backend-impl.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ---- thread-local tags ------------------------------------------------- */

static _Thread_local uint8_t  tl_sync_reason;       /* enum gpuscope_sync_reason */
static _Thread_local uint8_t  tl_owner;             /* enum gpuscope_buffer_owner */
static _Thread_local int32_t  tl_split_id = -1;
static _Thread_local uint32_t tl_eval_views;        /* eval-callback views so far in this split */
static _Thread_local uint32_t tl_eval_needed;
static _Thread_local uint32_t tl_allocs_reported;   /* nesting marks for gpuscope_alloc_mark */

uint8_t gpuscope_sync_reason_set(uint8_t reason, bool keep_outer) {
    const uint8_t previous = tl_sync_reason;
    if (!keep_outer || previous == GPUSCOPE_SYNC_REASON_UNKNOWN) {
        tl_sync_reason = reason;
    }
    return previous;
}

void gpuscope_sync_reason_restore(uint8_t previous) {
    tl_sync_reason = previous;
}

uint8_t gpuscope_owner_set(uint8_t owner) {
    const uint8_t previous = tl_owner;
    tl_owner = owner;
    return previous;
}

void gpuscope_owner_restore(uint8_t previous) {
    tl_owner = previous;
}

/* ---- per-ring state ------------------------------------------------------
 * Sets that must start empty with each ring: devices already described and
 * plans already reported. They remember the ring they belong to and are
 * cleared when another ring is active. */

#define DEDUPE_SLOTS 8192u                 /* power of two */
#define DEDUPE_PROBES 32u

static pthread_mutex_t ring_state_mutex = PTHREAD_MUTEX_INITIALIZER;
static void * state_ring;                  /* ring the sets below belong to */
static uint64_t devices_described;         /* bit per ring device index */
static uint64_t dedupe_slots[DEDUPE_SLOTS];

/* Callers hold ring_state_mutex. */
static void forget_sightings(void) {
    for (size_t i = 0; i < DEDUPE_SLOTS; i++) {
        __atomic_store_n(&dedupe_slots[i], 0, __ATOMIC_RELAXED);
    }
}

static void sync_ring_state(void) {
    void * ring = gpuscope_active;
    if (__atomic_load_n(&state_ring, __ATOMIC_ACQUIRE) == ring) {
        return;
    }
    pthread_mutex_lock(&ring_state_mutex);
    if (state_ring != ring) {
        __atomic_store_n(&devices_described, 0, __ATOMIC_RELAXED);
        forget_sightings();
        __atomic_store_n(&state_ring, ring, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&ring_state_mutex);
}

void gpuscope_plans_forget(void) {
    sync_ring_state();
    pthread_mutex_lock(&ring_state_mutex);
    forget_sightings();
    pthread_mutex_unlock(&ring_state_mutex);
}

/* True the first time `key` is seen with this ring. A full probe window
 * reports again rather than hiding an event. */
static bool first_sighting(uint64_t key) {
    sync_ring_state();
    key |= 1; /* 0 marks an empty slot */
    for (uint32_t i = 0; i < DEDUPE_PROBES; i++) {
        uint64_t * slot = &dedupe_slots[(key + i) & (DEDUPE_SLOTS - 1)];
        uint64_t seen = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (seen == key) {
            return false;
        }
        if (seen == 0) {
            if (__atomic_compare_exchange_n(slot, &seen, key, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                return true;
            }
            if (seen == key) {
                return false;
            }
        }
    }
    return true;
}

/* FNV-1a over a payload: the dedupe key of a plan. */
static uint64_t hash_bytes(const void * data, size_t size, uint64_t h) {
    const uint8_t * p = (const uint8_t *)data;
    for (size_t i = 0; i < size; i++) {
        h = (h ^ p[i]) * 1099511628211ull;
    }
    return h;
}

#define HASH_SEED 14695981039346656037ull

/* ---- devices -------------------------------------------------------------- */

static void describe_device(ggml_backend_dev_t dev, int16_t index) {
    gpuscope_ev_device_info ev;
    memset(&ev, 0, sizeof(ev));
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    ggml_backend_dev_memory(dev, &free_bytes, &total_bytes);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    ev.memory_total = total_bytes;
    ev.memory_free  = free_bytes;
    ev.name         = gpuscope_intern(ggml_backend_dev_name(dev));
    ev.description  = gpuscope_intern(ggml_backend_dev_description(dev));
    ev.backend      = reg != NULL ? gpuscope_intern(ggml_backend_reg_name(reg)) : 0;
    ev.dev_type     = (uint8_t)ggml_backend_dev_type(dev);
    GPUSCOPE_EMIT(DEVICE_INFO, index, ev);
}

int16_t gpuscope_dev_index(ggml_backend_dev_t dev) {
    const int16_t index = gpuscope_device(dev != NULL ? ggml_backend_dev_name(dev) : "CPU");
    if (index < 0 || dev == NULL) {
        return index;
    }
    sync_ring_state();
    const uint64_t bit = 1ull << (index & 63);
    if ((__atomic_fetch_or(&devices_described, bit, __ATOMIC_ACQ_REL) & bit) == 0) {
        describe_device(dev, index);
    }
    return index;
}

int16_t gpuscope_backend_index(ggml_backend_t backend) {
    return gpuscope_dev_index(backend != NULL ? ggml_backend_get_device(backend) : NULL);
}

static int16_t buft_index(ggml_backend_buffer_type_t buft) {
    return gpuscope_dev_index(buft != NULL ? ggml_backend_buft_get_device(buft) : NULL);
}

/* ---- buffers -------------------------------------------------------------- */

/* Wrappers whose memory belongs to buffers reported on their own. */
static bool is_wrapper(ggml_backend_buffer_t buffer) {
    return ggml_backend_buffer_is_multi_buffer(buffer) || ggml_backend_buffer_is_meta(buffer);
}

static uint8_t owner_of(ggml_backend_buffer_t buffer) {
    if (tl_owner != GPUSCOPE_OWNER_UNKNOWN) {
        return tl_owner;
    }
    switch (ggml_backend_buffer_get_usage(buffer)) {
        case GGML_BACKEND_BUFFER_USAGE_WEIGHTS: return GPUSCOPE_OWNER_WEIGHTS;
        case GGML_BACKEND_BUFFER_USAGE_COMPUTE: return GPUSCOPE_OWNER_COMPUTE;
        default:                                return GPUSCOPE_OWNER_UNKNOWN;
    }
}

static void emit_buffer(ggml_backend_buffer_t buffer, uint8_t action, bool from_host_ptr) {
    ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(buffer);
    gpuscope_ev_buffer ev;
    memset(&ev, 0, sizeof(ev));
    ev.buffer        = (uint64_t)(uintptr_t)buffer;
    ev.size          = ggml_backend_buffer_get_size(buffer);
    ev.buft          = buft != NULL ? gpuscope_intern(ggml_backend_buft_name(buft)) : 0;
    ev.action        = action;
    ev.usage         = (uint8_t)ggml_backend_buffer_get_usage(buffer);
    ev.owner         = owner_of(buffer);
    ev.is_host       = buft != NULL && ggml_backend_buft_is_host(buft);
    ev.from_host_ptr = from_host_ptr;
    GPUSCOPE_EMIT(BUFFER, buft_index(buft), ev);
}

uint32_t gpuscope_alloc_mark(void) {
    return tl_allocs_reported;
}

void gpuscope_buffer_alloc(ggml_backend_buffer_t buffer, uint32_t mark, bool from_host_ptr) {
    /* a nested allocation already reported this memory */
    if (buffer == NULL || tl_allocs_reported != mark || is_wrapper(buffer) || ggml_backend_buffer_get_size(buffer) == 0) {
        return;
    }
    tl_allocs_reported++;
    emit_buffer(buffer, GPUSCOPE_BUFFER_ALLOC, from_host_ptr);
}

void gpuscope_buffer_free(ggml_backend_buffer_t buffer) {
    if (is_wrapper(buffer) || ggml_backend_buffer_get_size(buffer) == 0) {
        return;
    }
    emit_buffer(buffer, GPUSCOPE_BUFFER_FREE, false);
}

void gpuscope_buffer_usage(ggml_backend_buffer_t buffer) {
    if (is_wrapper(buffer) || ggml_backend_buffer_get_size(buffer) == 0) {
        return;
    }
    emit_buffer(buffer, GPUSCOPE_BUFFER_USAGE, false);
}

/* ---- graph allocator and scheduler --------------------------------------- */

void gpuscope_gallocr_realloc(const void * galloc, uint8_t reason, uint32_t old_count, uint32_t new_count,
                              const struct ggml_tensor * tensor, int src_index, size_t size_max, size_t size_needed) {
    gpuscope_ev_gallocr_realloc ev;
    memset(&ev, 0, sizeof(ev));
    ev.galloc      = (uint64_t)(uintptr_t)galloc;
    ev.size_needed = size_needed;
    ev.size_max    = size_max;
    ev.old_count   = old_count;
    ev.new_count   = new_count;
    ev.tensor      = tensor != NULL ? gpuscope_intern(tensor->name) : 0;
    ev.reason      = reason;
    ev.src_index   = (uint8_t)(src_index < 0 ? 255 : src_index);
    GPUSCOPE_EMIT(GALLOCR_REALLOC, -1, ev);
}

void gpuscope_gallocr_buffer(const void * galloc, ggml_backend_buffer_type_t buft, int buffer_id,
                             size_t old_size, size_t new_size, int n_chunks) {
    gpuscope_ev_gallocr_buffer ev;
    memset(&ev, 0, sizeof(ev));
    ev.galloc    = (uint64_t)(uintptr_t)galloc;
    ev.old_size  = old_size;
    ev.new_size  = new_size;
    ev.buft      = gpuscope_intern(ggml_backend_buft_name(buft));
    ev.buffer_id = (uint32_t)buffer_id;
    ev.n_chunks  = (uint32_t)n_chunks;
    GPUSCOPE_EMIT(GALLOCR_BUFFER, buft_index(buft), ev);
}

void gpuscope_sched_reserve(const void * sched, uint8_t trigger, bool backend_ids_changed,
                            int64_t t_begin, int64_t t_synced, int n_splits, int n_nodes) {
    gpuscope_ev_sched_reserve ev;
    memset(&ev, 0, sizeof(ev));
    ev.sched               = (uint64_t)(uintptr_t)sched;
    ev.sync_ns             = (uint64_t)(t_synced - t_begin);
    ev.reserve_ns          = (uint64_t)(gpuscope_now_ns() - t_synced);
    ev.n_splits            = (uint32_t)n_splits;
    ev.n_nodes             = (uint32_t)n_nodes;
    ev.trigger             = trigger;
    ev.backend_ids_changed = backend_ids_changed;
    GPUSCOPE_EMIT(SCHED_RESERVE, -1, ev);
}

/* ---- syncs, splits, copies ---------------------------------------------- */

void gpuscope_sync_done(uint8_t what, ggml_backend_t backend, ggml_backend_dev_t dev, int64_t t_begin) {
    gpuscope_ev_sync ev;
    memset(&ev, 0, sizeof(ev));
    ev.duration_ns = (uint64_t)(gpuscope_now_ns() - t_begin);
    ev.backend     = gpuscope_intern(backend != NULL ? ggml_backend_name(backend)
                                                     : dev != NULL ? ggml_backend_dev_name(dev) : NULL);
    ev.split_id    = tl_split_id;
    ev.what        = what;
    ev.reason      = tl_sync_reason;
    if (tl_sync_reason == GPUSCOPE_SYNC_REASON_EVAL_CALLBACK) {
        ev.n_views  = tl_eval_views;
        ev.n_needed = tl_eval_needed;
    }
    const int16_t device = backend != NULL ? gpuscope_backend_index(backend) : gpuscope_dev_index(dev);
    GPUSCOPE_EMIT(SYNC, device, ev);
}

int32_t gpuscope_split_enter(const void * sched, int32_t split_id, ggml_backend_t backend,
                             int n_inputs, int n_nodes, int cur_copy) {
    const int32_t previous = tl_split_id;
    tl_split_id    = split_id;
    tl_eval_views  = 0;
    tl_eval_needed = 0;
    gpuscope_ev_split_begin ev;
    memset(&ev, 0, sizeof(ev));
    ev.sched    = (uint64_t)(uintptr_t)sched;
    ev.split_id = split_id;
    ev.backend  = gpuscope_intern(ggml_backend_name(backend));
    ev.n_inputs = (uint32_t)n_inputs;
    ev.n_nodes  = (uint32_t)n_nodes;
    ev.cur_copy = (uint8_t)cur_copy;
    GPUSCOPE_EMIT(SPLIT_BEGIN, gpuscope_backend_index(backend), ev);
    return previous;
}

void gpuscope_split_exit(const void * sched, int32_t split_id, ggml_backend_t backend, int64_t t_begin,
                         int32_t previous_split_id) {
    gpuscope_ev_split_end ev;
    memset(&ev, 0, sizeof(ev));
    ev.sched       = (uint64_t)(uintptr_t)sched;
    ev.duration_ns = (uint64_t)(gpuscope_now_ns() - t_begin);
    ev.split_id    = split_id;
    ev.backend     = gpuscope_intern(ggml_backend_name(backend));
    GPUSCOPE_EMIT(SPLIT_END, gpuscope_backend_index(backend), ev);
    tl_split_id = previous_split_id;
}

void gpuscope_eval_view(bool needed) {
    tl_eval_views++;
    tl_eval_needed += needed;
}

static void emit_copy(const struct ggml_tensor * tensor, uint64_t bytes, uint64_t duration_ns, uint8_t mode,
                      ggml_backend_t src, ggml_backend_t dst) {
    gpuscope_ev_copy ev;
    memset(&ev, 0, sizeof(ev));
    ev.bytes       = bytes;
    ev.duration_ns = duration_ns;
    ev.tensor      = gpuscope_intern(tensor->name);
    ev.split_id    = tl_split_id;
    ev.src_device  = gpuscope_backend_index(src);
    ev.dst_device  = gpuscope_backend_index(dst);
    ev.mode        = mode;
    GPUSCOPE_EMIT(COPY, ev.dst_device, ev);
}

void gpuscope_copy_done(const struct ggml_tensor * tensor, uint64_t bytes, uint8_t mode,
                        ggml_backend_t src, ggml_backend_t dst, int64_t t_begin) {
    emit_copy(tensor, bytes, (uint64_t)(gpuscope_now_ns() - t_begin), mode, src, dst);
}

void gpuscope_meta_part_done(const void * meta, size_t subgraph, size_t n_subgraphs, ggml_backend_t backend,
                             int n_nodes, int64_t t_begin) {
    gpuscope_ev_meta_part ev;
    memset(&ev, 0, sizeof(ev));
    ev.meta        = (uint64_t)(uintptr_t)meta;
    ev.duration_ns = (uint64_t)(gpuscope_now_ns() - t_begin);
    ev.subgraph    = (uint32_t)subgraph;
    ev.n_subgraphs = (uint32_t)n_subgraphs;
    ev.n_nodes     = (uint32_t)n_nodes;
    ev.backend     = gpuscope_intern(ggml_backend_name(backend));
    GPUSCOPE_EMIT(META_PART, gpuscope_backend_index(backend), ev);
}

void gpuscope_allreduce_done(struct ggml_tensor * const * nodes, const ggml_backend_t * backends, size_t n,
                             int64_t t_begin) {
    const uint64_t share = n > 0 ? (uint64_t)(gpuscope_now_ns() - t_begin) / n : 0;
    for (size_t j = 0; j < n; j++) {
        emit_copy(nodes[j], ggml_nbytes(nodes[j]), share, GPUSCOPE_COPY_ALLREDUCE, backends[j], backends[(j + 1) % n]);
    }
}

/* ---- placement and FlashAttention routes -------------------------------- */

/* Layer index from llama.cpp's "<name>-<il>" tensor names, -1 when there is none. */
static int tensor_layer(const char * name) {
    const char * dash = strrchr(name, '-');
    if (dash == NULL || dash[1] == '\0') {
        return -1;
    }
    int il = 0;
    for (const char * p = dash + 1; *p != '\0'; p++) {
        if (!isdigit((unsigned char)*p) || il > 100000) {
            return -1;
        }
        il = il * 10 + (*p - '0');
    }
    return il;
}

/* A node's layer: from its own name, else (unnamed fused ops such as FLASH_ATTN_EXT, named "node_N") from
 * its first source, looking through views ("Qcur-0 (permuted)" is a view of "Qcur-0"). */
static int node_layer(const struct ggml_tensor * node) {
    int il = tensor_layer(node->name);
    for (const struct ggml_tensor * t = node->src[0]; il < 0 && t != NULL; t = t->view_src) {
        il = tensor_layer(t->name);
    }
    return il;
}

static bool is_layout_op(enum ggml_op op) {
    return op == GGML_OP_NONE || op == GGML_OP_VIEW || op == GGML_OP_RESHAPE || op == GGML_OP_PERMUTE ||
           op == GGML_OP_TRANSPOSE;
}

void gpuscope_op_placements(ggml_backend_sched_t sched, struct ggml_cgraph * graph, int n_layer,
                            gpuscope_layer_device_fn layer_device, void * user_data) {
    const int n_nodes = ggml_graph_n_nodes(graph);
    for (int i = 0; i < n_nodes; i++) {
        struct ggml_tensor * node = ggml_graph_node(graph, i);
        if (is_layout_op(node->op)) {
            continue;
        }
        const int il = node_layer(node);
        if (il < 0 || il >= n_layer) {
            continue;
        }
        ggml_backend_t backend = ggml_backend_sched_get_tensor_backend(sched, node);
        ggml_backend_dev_t layer_dev = layer_device(user_data, il);
        if (backend == NULL || layer_dev == NULL || ggml_backend_get_device(backend) == layer_dev) {
            continue;
        }
        const char * backend_name = ggml_backend_name(backend);
        const uint32_t tensor = gpuscope_intern(node->name); /* also opens a pending ring before the sighting */
        uint64_t key = hash_bytes(node->name, strlen(node->name), HASH_SEED);
        key = hash_bytes(backend_name, strlen(backend_name), key);
        key = hash_bytes(&layer_dev, sizeof(layer_dev), key);
        if (!first_sighting(key)) {
            continue;
        }
        gpuscope_ev_op_placement ev;
        memset(&ev, 0, sizeof(ev));
        ev.tensor        = tensor;
        ev.backend       = gpuscope_intern(backend_name);
        ev.layer_backend = gpuscope_intern(ggml_backend_dev_name(layer_dev));
        ev.op            = (uint16_t)node->op;
        ev.layer         = (int16_t)il;
        GPUSCOPE_EMIT(OP_PLACEMENT, gpuscope_backend_index(backend), ev);
    }
}

void gpuscope_fa_plan(ggml_backend_dev_t dev, uint32_t compute_capability, const struct ggml_tensor * dst,
                      int kernel, uint8_t reason, uint8_t caller) {
    const struct ggml_tensor * q    = dst->src[0];
    const struct ggml_tensor * k    = dst->src[1];
    const struct ggml_tensor * v    = dst->src[2];
    const struct ggml_tensor * mask = dst->src[3];
    gpuscope_ev_fa_plan ev;
    memset(&ev, 0, sizeof(ev));
    ev.q_tokens           = (uint32_t)q->ne[1];
    ev.n_kv               = (uint32_t)k->ne[1];
    ev.compute_capability = compute_capability;
    ev.head_dim_k         = (uint16_t)k->ne[0];
    ev.head_dim_v         = (uint16_t)v->ne[0];
    ev.q_heads            = (uint16_t)q->ne[2];
    ev.kv_heads           = (uint16_t)k->ne[2];
    ev.n_streams          = (uint16_t)q->ne[3];
    ev.mask_ne2           = mask != NULL ? (uint16_t)mask->ne[2] : 0;
    ev.kernel             = (uint16_t)kernel;
    ev.type_q             = (uint8_t)q->type;
    ev.type_k             = (uint8_t)k->type;
    ev.type_v             = (uint8_t)v->type;
    ev.type_mask          = mask != NULL ? (uint8_t)mask->type : 255;
    ev.reason             = reason;
    ev.caller             = caller;
    /* identical plans (every layer, every allocator pass) are one event: key without the tensor name */
    uint64_t key = hash_bytes(&ev, sizeof(ev), HASH_SEED);
    key = hash_bytes(&dev, sizeof(dev), key);
    const uint32_t tensor = gpuscope_intern(dst->name); /* also opens a pending ring before the sighting */
    if (!first_sighting(key)) {
        return;
    }
    ev.tensor = tensor;
    GPUSCOPE_EMIT(FA_PLAN, gpuscope_dev_index(dev), ev);
}

/* ---- decode steps --------------------------------------------------------- */

static uint64_t decode_steps; /* process-wide step counter */

void gpuscope_decode_begin(gpuscope_step_state * st, const void * ctx, uint32_t n_tokens, uint32_t n_outputs,
                           const int32_t * pos, const int32_t * n_seq_id, int32_t * const * seq_id,
                           uint32_t kv_used) {
    gpuscope_ev_decode_begin ev;
    memset(&ev, 0, sizeof(ev));
    /* distinct sequence ids, as a bitset over llama.cpp's LLAMA_MAX_SEQ (256) */
    uint64_t seen[4] = {0, 0, 0, 0};
    int32_t pos_min = INT32_MAX;
    int32_t pos_max = INT32_MIN;
    for (uint32_t i = 0; i < n_tokens; i++) {
        if (pos != NULL) {
            pos_min = pos[i] < pos_min ? pos[i] : pos_min;
            pos_max = pos[i] > pos_max ? pos[i] : pos_max;
        }
        for (int32_t s = 0; n_seq_id != NULL && seq_id != NULL && s < n_seq_id[i]; s++) {
            const uint32_t id = (uint32_t)seq_id[i][s] & 255u;
            seen[id >> 6] |= 1ull << (id & 63);
        }
    }
    for (int w = 0; w < 4; w++) {
        ev.n_seqs += (uint32_t)__builtin_popcountll(seen[w]);
    }
    st->step       = __atomic_add_fetch(&decode_steps, 1, __ATOMIC_RELAXED);
    st->t_begin_ns = gpuscope_now_ns();
    st->n_ubatches = 0;
    ev.step      = st->step;
    ev.ctx       = (uint64_t)(uintptr_t)ctx;
    ev.n_tokens  = n_tokens;
    ev.n_outputs = n_outputs;
    ev.pos_min   = pos_min <= pos_max ? pos_min : -1;
    ev.pos_max   = pos_min <= pos_max ? pos_max : -1;
    ev.kv_used   = kv_used;
    GPUSCOPE_EMIT(DECODE_BEGIN, -1, ev);
}

void gpuscope_decode_ubatch(gpuscope_step_state * st, uint32_t n_tokens, uint32_t n_seqs, uint32_t n_outputs,
                            uint32_t n_kv, uint32_t n_nodes, bool graph_reused) {
    if (st->step == 0) {
        return; /* not inside a decode that began with a ring open */
    }
    gpuscope_ev_ubatch ev;
    memset(&ev, 0, sizeof(ev));
    ev.step         = st->step;
    ev.index        = st->n_ubatches++;
    ev.n_tokens     = n_tokens;
    ev.n_seqs       = n_seqs;
    ev.n_outputs    = n_outputs;
    ev.n_kv         = n_kv;
    ev.n_nodes      = n_nodes;
    ev.graph_reused = graph_reused;
    GPUSCOPE_EMIT(UBATCH, -1, ev);
}

void gpuscope_decode_submitted(gpuscope_step_state * st, int status) {
    if (st->step == 0) {
        return;
    }
    gpuscope_ev_decode_submitted ev;
    memset(&ev, 0, sizeof(ev));
    ev.step        = st->step;
    ev.duration_ns = (uint64_t)(gpuscope_now_ns() - st->t_begin_ns);
    ev.n_ubatches  = st->n_ubatches;
    ev.status      = status;
    GPUSCOPE_EMIT(DECODE_SUBMITTED, -1, ev);
    st->submitted_step       = st->step;
    st->submitted_t_begin_ns = st->t_begin_ns;
    st->step = 0;
}

void gpuscope_decode_synced(gpuscope_step_state * st, int64_t t_wait_begin) {
    if (st->submitted_step == 0) {
        return;
    }
    const int64_t now = gpuscope_now_ns();
    gpuscope_ev_decode_synced ev;
    memset(&ev, 0, sizeof(ev));
    ev.step        = st->submitted_step;
    ev.duration_ns = (uint64_t)(now - st->submitted_t_begin_ns);
    ev.wait_ns     = (uint64_t)(now - t_wait_begin);
    GPUSCOPE_EMIT(DECODE_SYNCED, -1, ev);
    st->submitted_step = 0;
}
