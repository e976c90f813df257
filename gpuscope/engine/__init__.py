"""The patched engine: pinned llama.cpp source, gpuscope's hook patch series, and cached builds."""
