"""Print, per recorded trace, the distinct FlashAttention plans and every op placed off its layer's device."""
import sys

import gpuscope

for path in sys.argv[1:]:
    trace = gpuscope.load_trace(path)
    plans = trace.table("fa_plan")
    placed = trace.table("op_placement")
    print(f"== {path}: {trace.meta['exit']['how']}, ring {trace.meta['ring'].get('state')}")
    if len(plans):
        columns = ["caller", "kernel", "reason", "head_dim_k", "head_dim_v", "q_heads", "kv_heads", "q_tokens",
                   "type_k", "type_v", "compute_capability"]
        print(plans.groupby(columns, observed=True).size().rename("count").reset_index().to_string(index=False))
    if len(placed):
        print(placed.groupby(["op", "backend", "layer_backend"], observed=True).size().rename("ops").to_string())
