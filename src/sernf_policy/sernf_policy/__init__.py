"""SERNF model: normalizing-flow actor over action chunks, chunked distributional critic, encoders, normalizer, checkpoints, action selection; policy_node."""
