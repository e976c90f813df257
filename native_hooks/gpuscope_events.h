/*
 * gpuscope event schema: the one definition of every event kind.
 *
 * The C hooks write these payloads into the ring; the Python reader parses this
 * file to build its numpy dtypes (gpuscope/ring/schema.py), and
 * tests/test_schema_agreement.py compiles it to prove both sides agree.
 *
 * Style rules the Python parser relies on (keep them):
 *   - enums: `enum gpuscope_<name> { GPUSCOPE_<PREFIX>_<VALUE> = <int>, ... };`
 *   - GPUSCOPE_KINDS(X) lists every member of enum gpuscope_kind once, in its
 *     order, one `X(<NAME>, <name>)` per line: the kind GPUSCOPE_KIND_<NAME>
 *     and its payload gpuscope_ev_<name> (the reader checks the pairs).
 *   - payloads: `typedef struct gpuscope_ev_<kind> { <type> <field>; ... } gpuscope_ev_<kind>;`
 *     one field per line, types from <stdint.h> only; a trailing line comment
 *     tells the reader how to decode the column: `// enum: <name>` (values of
 *     enum gpuscope_<name>), `// string` (an interned string id) or
 *     `// device` (a ring device index).
 *   - every payload fits GPUSCOPE_PAYLOAD_SIZE bytes.
 */
#ifndef GPUSCOPE_EVENTS_H
#define GPUSCOPE_EVENTS_H

#include <stdint.h>

#define GPUSCOPE_ABI_VERSION   3  /* 3: per-thread blocks, TSC timestamps; 2: a live writer holds a flock */
#define GPUSCOPE_RECORD_SIZE   64
#define GPUSCOPE_PAYLOAD_SIZE  40

/* Event kinds. 0 is never written. */
enum gpuscope_kind {
    GPUSCOPE_KIND_MARK             = 1,  /* user annotation (from Python or a tool) */
    GPUSCOPE_KIND_DEVICE_INFO      = 2,  /* a device seen by the engine */
    GPUSCOPE_KIND_GALLOCR_REALLOC  = 3,  /* graph allocator decided it must reallocate */
    GPUSCOPE_KIND_GALLOCR_BUFFER   = 4,  /* graph allocator (re)allocated one of its buffers */
    GPUSCOPE_KIND_SCHED_RESERVE    = 5,  /* scheduler re-reserved its graph allocator */
    GPUSCOPE_KIND_FA_PLAN          = 6,  /* FlashAttention kernel selection */
    GPUSCOPE_KIND_OP_PLACEMENT     = 7,  /* op placed on another backend than its layer's */
    GPUSCOPE_KIND_SYNC             = 8,  /* backend/event synchronize or event wait */
    GPUSCOPE_KIND_BUFFER           = 9,  /* backend buffer alloc / free / usage */
    GPUSCOPE_KIND_DECODE_BEGIN     = 10, /* llama_decode entered */
    GPUSCOPE_KIND_UBATCH           = 11, /* a ubatch graph is ready and about to compute */
    GPUSCOPE_KIND_DECODE_SUBMITTED = 12, /* llama_decode returned (work queued) */
    GPUSCOPE_KIND_DECODE_SYNCED    = 13, /* the step's work really finished */
    GPUSCOPE_KIND_SPLIT_BEGIN      = 14, /* scheduler split starts */
    GPUSCOPE_KIND_SPLIT_END        = 15, /* scheduler split submitted */
    GPUSCOPE_KIND_COPY             = 16, /* cross-backend input copy */
    GPUSCOPE_KIND_META_PART        = 17, /* tensor split: one device's part of a subgraph submitted */
};

/* Each kind's name in both cases: the preprocessor cannot change case, and an
 * emit site names the kind once (GPUSCOPE_EMIT in gpuscope_ring.h). */
#define GPUSCOPE_KINDS(X) \
    X(MARK,             mark)              \
    X(DEVICE_INFO,      device_info)       \
    X(GALLOCR_REALLOC,  gallocr_realloc)   \
    X(GALLOCR_BUFFER,   gallocr_buffer)    \
    X(SCHED_RESERVE,    sched_reserve)     \
    X(FA_PLAN,          fa_plan)           \
    X(OP_PLACEMENT,     op_placement)      \
    X(SYNC,             sync)              \
    X(BUFFER,           buffer)            \
    X(DECODE_BEGIN,     decode_begin)      \
    X(UBATCH,           ubatch)            \
    X(DECODE_SUBMITTED, decode_submitted)  \
    X(DECODE_SYNCED,    decode_synced)     \
    X(SPLIT_BEGIN,      split_begin)       \
    X(SPLIT_END,        split_end)         \
    X(COPY,             copy)              \
    X(META_PART,        meta_part)

enum gpuscope_realloc_reason {
    GPUSCOPE_REALLOC_N_NODES      = 1, /* graph has another node count */
    GPUSCOPE_REALLOC_N_LEAFS      = 2, /* graph has another leaf count */
    GPUSCOPE_REALLOC_NODE_INVALID = 3, /* a node outgrew its slot or lost its buffer */
    GPUSCOPE_REALLOC_SRC_INVALID  = 4, /* a node's source outgrew its slot or lost its buffer */
    GPUSCOPE_REALLOC_NO_GRAPH     = 5, /* allocator had never seen a graph */
};

enum gpuscope_reserve_trigger {
    GPUSCOPE_RESERVE_ALLOC_FAILED = 1, /* alloc_graph could not reuse: sync all + reserve */
    GPUSCOPE_RESERVE_EXPLICIT     = 2, /* ggml_backend_sched_reserve */
    GPUSCOPE_RESERVE_SIZE         = 3, /* ggml_backend_sched_reserve_size */
};

enum gpuscope_fa_kernel {
    GPUSCOPE_FA_NONE    = 0,
    GPUSCOPE_FA_VEC     = 100,
    GPUSCOPE_FA_TILE    = 200,
    GPUSCOPE_FA_MMA_F16 = 400,
};

enum gpuscope_fa_reason {
    GPUSCOPE_FA_REASON_OK             = 0,
    GPUSCOPE_FA_REASON_COMPILED_OUT   = 1, /* FA kernels not built */
    GPUSCOPE_FA_REASON_HEAD_SIZE      = 2, /* K/V head size unsupported or mismatched */
    GPUSCOPE_FA_REASON_GQA            = 3, /* head size needs a GQA ratio it does not have */
    GPUSCOPE_FA_REASON_KV_TYPE        = 4, /* K or V type has no kernel */
    GPUSCOPE_FA_REASON_MASK_BROADCAST = 5, /* mask->ne[2] != 1 */
    GPUSCOPE_FA_REASON_ARCH           = 6, /* no kernel for this architecture */
    GPUSCOPE_FA_REASON_OTHER          = 7,
};

enum gpuscope_fa_caller {
    GPUSCOPE_FA_CALLER_SUPPORTS_OP = 1,
    GPUSCOPE_FA_CALLER_ALLOC_SIZE  = 2,
    GPUSCOPE_FA_CALLER_COMPUTE     = 3,
};

enum gpuscope_sync_what {
    GPUSCOPE_SYNC_BACKEND     = 1, /* ggml_backend_synchronize */
    GPUSCOPE_SYNC_EVENT       = 2, /* ggml_backend_event_synchronize */
    GPUSCOPE_SYNC_EVENT_WAIT  = 3, /* ggml_backend_event_wait */
};

enum gpuscope_sync_reason {
    GPUSCOPE_SYNC_REASON_UNKNOWN        = 0, /* no call site tagged it */
    GPUSCOPE_SYNC_REASON_EVAL_CALLBACK  = 1,
    GPUSCOPE_SYNC_REASON_INPUT_COPY     = 2,
    GPUSCOPE_SYNC_REASON_SPLIT_BOUNDARY = 3,
    GPUSCOPE_SYNC_REASON_REALLOC        = 4,
    GPUSCOPE_SYNC_REASON_USER           = 5, /* llama_synchronize / sched synchronize */
    GPUSCOPE_SYNC_REASON_OUTPUT_GROW    = 6,
    GPUSCOPE_SYNC_REASON_ASYNC_FALLBACK = 7, /* backend has no async get/set/copy: sync, then a blocking transfer */
};

enum gpuscope_buffer_action {
    GPUSCOPE_BUFFER_ALLOC = 1,
    GPUSCOPE_BUFFER_FREE  = 2,
    GPUSCOPE_BUFFER_USAGE = 3,
};

enum gpuscope_buffer_owner {
    GPUSCOPE_OWNER_UNKNOWN = 0,
    GPUSCOPE_OWNER_WEIGHTS = 1,
    GPUSCOPE_OWNER_KV      = 2,
    GPUSCOPE_OWNER_COMPUTE = 3,
    GPUSCOPE_OWNER_OUTPUT  = 4,
};

enum gpuscope_copy_mode {
    GPUSCOPE_COPY_ASYNC       = 1,
    GPUSCOPE_COPY_BLOCKING    = 2, /* backend has no async copy: blocking fallback */
    GPUSCOPE_COPY_MOE_PARTIAL = 3, /* only the used experts were copied */
    GPUSCOPE_COPY_USER_INPUT  = 4, /* user input tensor copied to the split backend */
    GPUSCOPE_COPY_ALLREDUCE   = 5, /* tensor split: the backend's collective all-reduce (NCCL), one record per device */
    GPUSCOPE_COPY_REDUCE_STEP = 6, /* tensor split: generic all-reduce, one device's partial sum pushed to another */
};

/* The record every event travels in: 24-byte header + 40-byte payload. */
typedef struct gpuscope_record {
    uint64_t seq;        /* commit sequence: writer << 47 | its sequence number, once committed */
    uint64_t ts_ns;      /* the ring's clock (header `clock`); readers give CLOCK_MONOTONIC ns */
    uint16_t kind;       /* enum gpuscope_kind */
    int16_t  device;     /* ring device index, -1 when none */
    uint32_t tid;        /* kernel thread id of the producer */
    uint8_t  payload[GPUSCOPE_PAYLOAD_SIZE];
} gpuscope_record;

typedef struct gpuscope_ev_mark {
    int64_t  value;
    int64_t  value2;
    uint32_t name;                 // string
    uint32_t label;                // string
} gpuscope_ev_mark;

typedef struct gpuscope_ev_device_info {
    uint64_t memory_total;
    uint64_t memory_free;
    uint32_t name;                 // string
    uint32_t description;          // string
    uint32_t backend;              // string
    uint8_t  dev_type;
} gpuscope_ev_device_info;

typedef struct gpuscope_ev_gallocr_realloc {
    uint64_t galloc;               /* allocator address: tells allocators apart */
    uint64_t size_needed;          /* bytes the tensor needs now */
    uint64_t size_max;             /* bytes its slot was reserved for */
    uint32_t old_count;            /* n_nodes / n_leafs before */
    uint32_t new_count;            /* n_nodes / n_leafs now */
    uint32_t tensor;               // string
    uint8_t  reason;               // enum: realloc_reason
    uint8_t  src_index;
} gpuscope_ev_gallocr_realloc;

typedef struct gpuscope_ev_gallocr_buffer {
    uint64_t galloc;
    uint64_t old_size;
    uint64_t new_size;
    uint32_t buft;                 // string
    uint32_t buffer_id;
    uint32_t n_chunks;
} gpuscope_ev_gallocr_buffer;

typedef struct gpuscope_ev_sched_reserve {
    uint64_t sched;
    uint64_t sync_ns;              /* time spent synchronizing all backends first */
    uint64_t reserve_ns;           /* time spent in reserve */
    uint32_t n_splits;
    uint32_t n_nodes;
    uint8_t  trigger;              // enum: reserve_trigger
    uint8_t  backend_ids_changed;
} gpuscope_ev_sched_reserve;

typedef struct gpuscope_ev_fa_plan {
    uint32_t q_tokens;             /* Q->ne[1]: batch */
    uint32_t n_kv;                 /* K->ne[1] */
    uint32_t compute_capability;
    uint32_t tensor;               // string
    uint16_t head_dim_k;           /* K->ne[0] */
    uint16_t head_dim_v;           /* V->ne[0] */
    uint16_t q_heads;              /* Q->ne[2] */
    uint16_t kv_heads;             /* K->ne[2] */
    uint16_t n_streams;            /* Q->ne[3] */
    uint16_t mask_ne2;
    uint16_t kernel;               // enum: fa_kernel
    uint8_t  type_q;               /* ggml_type */
    uint8_t  type_k;
    uint8_t  type_v;
    uint8_t  type_mask;            /* 255: no mask */
    uint8_t  reason;               // enum: fa_reason
    uint8_t  caller;               // enum: fa_caller
} gpuscope_ev_fa_plan;

typedef struct gpuscope_ev_op_placement {
    uint32_t tensor;               // string
    uint32_t backend;              // string
    uint32_t layer_backend;        // string
    uint16_t op;                   /* ggml_op */
    int16_t  layer;                /* layer index from the tensor name, -1 unknown */
} gpuscope_ev_op_placement;

typedef struct gpuscope_ev_sync {
    uint64_t duration_ns;
    uint32_t backend;              // string
    int32_t  split_id;             /* -1 outside compute_splits */
    uint32_t n_views;              /* eval callback: graph views in this split */
    uint32_t n_needed;             /* eval callback: views the callback asked for */
    uint8_t  what;                 // enum: sync_what
    uint8_t  reason;               // enum: sync_reason
} gpuscope_ev_sync;

typedef struct gpuscope_ev_buffer {
    uint64_t buffer;               /* buffer address: pairs alloc with free */
    uint64_t size;
    uint32_t buft;                 // string
    uint8_t  action;               // enum: buffer_action
    uint8_t  usage;                /* ggml_backend_buffer_usage */
    uint8_t  owner;                // enum: buffer_owner
    uint8_t  is_host;
    uint8_t  from_host_ptr;        /* wraps memory the engine did not allocate (mmap) */
} gpuscope_ev_buffer;

typedef struct gpuscope_ev_decode_begin {
    uint64_t step;                 /* process-wide decode counter */
    uint64_t ctx;                  /* llama_context address */
    uint32_t n_tokens;
    uint32_t n_outputs;
    uint32_t n_seqs;
    int32_t  pos_min;              /* lowest position in the batch */
    int32_t  pos_max;              /* highest position in the batch */
    uint32_t kv_used;              /* cells in use before the step */
} gpuscope_ev_decode_begin;

typedef struct gpuscope_ev_ubatch {
    uint64_t step;
    uint32_t index;
    uint32_t n_tokens;
    uint32_t n_seqs;
    uint32_t n_outputs;
    uint32_t n_kv;                 /* KV cells in the ubatch's view */
    uint32_t n_nodes;              /* graph nodes */
    uint8_t  graph_reused;
} gpuscope_ev_ubatch;

typedef struct gpuscope_ev_decode_submitted {
    uint64_t step;
    uint64_t duration_ns;          /* decode entry to return */
    uint32_t n_ubatches;
    int32_t  status;               /* llama_decode's return value */
} gpuscope_ev_decode_submitted;

typedef struct gpuscope_ev_decode_synced {
    uint64_t step;
    uint64_t duration_ns;          /* decode entry to end of the step's work */
    uint64_t wait_ns;              /* time spent waiting in synchronize */
} gpuscope_ev_decode_synced;

typedef struct gpuscope_ev_split_begin {
    uint64_t sched;
    int32_t  split_id;
    uint32_t backend;              // string
    uint32_t n_inputs;
    uint32_t n_nodes;
    uint8_t  cur_copy;
} gpuscope_ev_split_begin;

typedef struct gpuscope_ev_split_end {
    uint64_t sched;
    uint64_t duration_ns;          /* host time to submit the split */
    int32_t  split_id;
    uint32_t backend;              // string
} gpuscope_ev_split_end;

typedef struct gpuscope_ev_copy {
    uint64_t bytes;
    uint64_t duration_ns;
    uint32_t tensor;               // string
    int32_t  split_id;
    int16_t  src_device;           // device
    int16_t  dst_device;           // device
    uint8_t  mode;                 // enum: copy_mode
} gpuscope_ev_copy;

typedef struct gpuscope_ev_meta_part {
    uint64_t meta;                 /* the meta backend's context */
    uint64_t duration_ns;          /* host time to submit this device's part */
    uint32_t subgraph;
    uint32_t n_subgraphs;
    uint32_t n_nodes;
    uint32_t backend;              // string
} gpuscope_ev_meta_part;

#endif /* GPUSCOPE_EVENTS_H */
