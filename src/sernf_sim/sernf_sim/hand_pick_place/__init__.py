"""Dexterous simulated task: a multi-finger hand on a 6-DoF end effector picks one of two
objects off a table and places it in a target square (MuJoCo + numpy; no torch, no ROS).

The simulated stand-in for the paper's scissors task (appendix E): relative end-effector actions
in the current EE frame plus absolute finger targets, two cameras, a two-stage sparse reward
(grasp, place), randomized layouts plus 10 fixed test layouts, a domain-shifted "real robot"
variant and a multimodal scripted expert with a quality knob.

Entry points: :func:`make_env`, :class:`HandPickPlace`, :class:`HandPickPlaceConfig`,
:class:`DomainShift`, :func:`test_configs`, :class:`HandExpert`, :func:`default_demo_quality`;
``hand_pick_place.demos.hand_demo_dataset`` records the default demonstration set and
``python -m sernf_sim.hand_pick_place.bench`` measures throughput (``--success``: the expert's
success rates). The hand is the ORCA v1 hand's 17 joints (A = 7 + 17 = 24).
Chunk timing of the task (docs/design.md §6, scissors): ``T=1, P=3, H=10`` at 10 Hz (:data:`HAND_TIMING`).
"""

from typing import NamedTuple

from sernf_sim.hand_pick_place.config import (
    DomainShift,
    HandEpisodeConfig,
    HandPickPlaceConfig,
    test_configs,
)
from sernf_sim.hand_pick_place.env import (
    ACTION_DIM,
    HandPickPlace,
    action_names,
    clip_action,
    make_env,
)
from sernf_sim.hand_pick_place.expert import (
    DEFAULT_DEMO_QUALITY,
    ChunkedHandExpert,
    HandExpert,
    HandExpertConfig,
    default_demo_quality,
)


class HandTiming(NamedTuple):
    """Chunk timing (docs/design.md §6); same fields as ``sernf_sim.evaluation.ChunkTiming``."""

    T: int
    P: int
    H: int


#: Chunk timing used with this task (the paper's scissors setting, Fig. 7a).
HAND_TIMING = HandTiming(T=1, P=3, H=10)

__all__ = [
    "ACTION_DIM",
    "DEFAULT_DEMO_QUALITY",
    "HAND_TIMING",
    "ChunkedHandExpert",
    "DomainShift",
    "HandEpisodeConfig",
    "HandExpert",
    "HandExpertConfig",
    "HandPickPlace",
    "HandPickPlaceConfig",
    "action_names",
    "clip_action",
    "default_demo_quality",
    "make_env",
    "test_configs",
]
