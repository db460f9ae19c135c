"""Parameter counts reported in appendix G1 of the paper, and paper-size model configs.

Used by ``bench/model_size.py`` and the tests to compare our modules with the paper:

* ResNet-18 per encoder (no FC): 11,176,512 - matched exactly (timm ``resnet18``).
* DINOv2 ViT-L/14 (+4 registers) backbone + 1024->512 projector: 303,711,744. timm's model at
  224 x 224 plus the projector has 303,755,776 (+44,032 = 43 x 1024, 0.014%); the paper's
  count evidently sizes the position / prefix-token tables differently. Not adjustable
  without changing the pretrained weights' layout, so we keep timm's.
* Flow actor, per coupling layer: ``3,283,904 + 1,282 x A``. The ``1,282 x A`` term is
  reproduced exactly (input ``Linear(A, 256)`` + two GELU heads ``256 -> 512 -> A``); the
  constant depends on details the paper leaves open (MLP width, context projections, biases).
  Ours (SwiGLU width 4 x 256, bias-free attention) is 1,706,496 per layer, plus one shared
  512-wide context RMSNorm; see :mod:`sernf_policy.flow`.
* Critic, per ensemble member: ``3,999,077 + 512 x (A + T_a + 1)`` - matched exactly with
  ``T_a = P + H`` action tokens (prefix + chunk), see :mod:`sernf_policy.critic`.
"""

from __future__ import annotations

from torch import nn

from .critic import ChunkCriticConfig
from .flow import ChunkFlowConfig

__all__ = [
    "PAPER_ACTOR_LAYER_CONST",
    "PAPER_ACTOR_LAYER_PER_ACTION",
    "PAPER_CRITIC_CONST",
    "PAPER_DINOV2_L_WITH_PROJECTOR",
    "PAPER_RESNET18",
    "count_parameters",
    "paper_actor_params",
    "paper_critic_params",
    "paper_size_critic_config",
    "paper_size_flow_config",
]

#: ResNet-18 without the FC classifier (G1).
PAPER_RESNET18 = 11_176_512
#: DINOv2 ViT-L/14 backbone plus the 1024 -> 512 projector (G1).
PAPER_DINOV2_L_WITH_PROJECTOR = 303_711_744
#: Flow actor, per coupling layer: constant part and factor of the action dimension (G1).
PAPER_ACTOR_LAYER_CONST = 3_283_904
PAPER_ACTOR_LAYER_PER_ACTION = 1_282
#: Critic, per ensemble member: constant part (G1); plus 512 x (A + T_a + 1).
PAPER_CRITIC_CONST = 3_999_077


def count_parameters(module: nn.Module) -> int:
    """All parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def paper_actor_params(action_dim: int, num_layers: int = 16) -> int:
    """G1: ``K x (3,283,904 + 1,282 x A)``."""
    return num_layers * (PAPER_ACTOR_LAYER_CONST + PAPER_ACTOR_LAYER_PER_ACTION * action_dim)


def paper_critic_params(action_dim: int, action_tokens: int) -> int:
    """G1, per critic: ``3,999,077 + 512 x (A + T_a + 1)``; ``T_a`` = action tokens (P + H here)."""
    return PAPER_CRITIC_CONST + 512 * (action_dim + action_tokens + 1)


def paper_size_flow_config(action_dim: int, horizon: int, context_dim: int = 512) -> ChunkFlowConfig:
    """The paper's actor: 16 couplings, hidden 256, 8 heads."""
    return ChunkFlowConfig(
        action_dim=action_dim, horizon=horizon, context_dim=context_dim, num_layers=16, hidden_dim=256, num_heads=8
    )


def paper_size_critic_config(action_dim: int, horizon: int, prefix_len: int, obs_dim: int = 512) -> ChunkCriticConfig:
    """The paper's critic ensemble: M=2 x (d_model 512, 8 heads, 3 layers, FF 256, 101 bins)."""
    return ChunkCriticConfig(action_dim=action_dim, horizon=horizon, prefix_len=prefix_len, obs_dim=obs_dim)
