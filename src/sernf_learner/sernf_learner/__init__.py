"""SERNF algorithm: zarr replay, the four training stages and distillation, trainer and CLIs; learner_node."""
