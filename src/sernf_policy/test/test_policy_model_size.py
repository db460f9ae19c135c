"""Paper-size actor and critic build; parameter counts vs. appendix G1 (no forward passes)."""

from __future__ import annotations

import pytest

from sernf_policy.critic import ChunkCritic
from sernf_policy.flow import ChunkFlow
from sernf_policy.param_counts import (
    PAPER_ACTOR_LAYER_CONST,
    PAPER_ACTOR_LAYER_PER_ACTION,
    count_parameters,
    paper_actor_params,
    paper_critic_params,
    paper_size_critic_config,
    paper_size_flow_config,
)

#: Our coupling layer's constant part (documented in flow.py / param_counts.py).
OUR_ACTOR_LAYER_CONST = 1_706_496


@pytest.mark.parametrize(("a", "h", "p"), [(17, 6, 2), (24, 10, 3)])  # cube, scissors (Fig. 7)
def test_paper_size_counts(a, h, p):
    flow = ChunkFlow(paper_size_flow_config(a, h))
    per_layer = count_parameters(flow.layers[0])
    total = count_parameters(flow)
    print(f"actor A={a}: ours {total:,} ({per_layer:,}/layer) vs paper {paper_actor_params(a):,}")
    # the action-dependent part matches G1 exactly; the constant is the documented difference
    assert per_layer == OUR_ACTOR_LAYER_CONST + PAPER_ACTOR_LAYER_PER_ACTION * a
    assert paper_actor_params(a) // 16 - per_layer == PAPER_ACTOR_LAYER_CONST - OUR_ACTOR_LAYER_CONST
    assert total == 16 * per_layer + 512  # + the shared context RMSNorm
    assert all(count_parameters(layer) == per_layer for layer in flow.layers)

    critic = ChunkCritic(paper_size_critic_config(a, h, p))
    members = [count_parameters(m) for m in critic.members]
    print(f"critic A={a}, T_a=P+H={p + h}: ours {members[0]:,} per critic vs paper {paper_critic_params(a, p + h):,}")
    assert len(members) == 2
    assert members == [paper_critic_params(a, p + h)] * 2
    layer = critic.members[0].encoder.layers[0]
    assert layer.linear1.out_features == 256 and layer.self_attn.num_heads == 8
    assert len(critic.members[0].encoder.layers) == 3
