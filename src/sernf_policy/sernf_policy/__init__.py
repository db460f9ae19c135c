"""SERNF model: normalizing-flow actor over action chunks (a Gaussian one for ablations;
flow-matching and ACT imitation baselines),
chunked distributional critic, encoders, normalizer, checkpoints and action selection
(best-of-N); policy_node.

The model modules are pure PyTorch (no rclpy or message types). The names below are exported
lazily (PEP 562), so importing a torch-free submodule such as ``sernf_policy.policy_node``
does not pay for importing torch and timm.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ACTActorConfig": "act_actor",
    "ACTChunkActor": "act_actor",
    "CACHED_FEATURES_SUFFIX": "spec",
    "CheckpointError": "checkpoint",
    "ChunkCritic": "critic",
    "ChunkCriticConfig": "critic",
    "ChunkFlow": "flow",
    "ChunkFlowConfig": "flow",
    "DinoV2Encoder": "encoders",
    "DinoV2EncoderConfig": "encoders",
    "EncoderConfig": "encoders",
    "FlowMatchingActorConfig": "flow_matching_actor",
    "FlowMatchingChunkActor": "flow_matching_actor",
    "GaussianActorConfig": "gaussian_actor",
    "GaussianChunkActor": "gaussian_actor",
    "HLGauss": "hl_gauss",
    "LowDimTokenizer": "encoders",
    "Normalizer": "normalizer",
    "ObsKeySpec": "spec",
    "ObservationEncoder": "encoders",
    "Policy": "policy",
    "PolicyConfig": "policy",
    "PrefixTokenizer": "policy",
    "ResNetEncoder": "encoders",
    "ResNetEncoderConfig": "encoders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sernf_policy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
