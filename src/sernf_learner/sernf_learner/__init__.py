"""SERNF algorithm: the four training stages and distillation, trainer and CLIs; learner_node."""
