"""PointExpert: clean success, multimodality, the quality knob, chunked vs closed-loop use."""

import numpy as np
import pytest

from sernf_sim.evaluation import rollout_chunked
from sernf_sim.point_expert import ExpertConfig, PointExpert
from sernf_sim.point_task import POINT_TIMING, PointTask, route_taken

T, P, H = POINT_TIMING.T, POINT_TIMING.P, POINT_TIMING.H


def _rollout(
    quality=1.0, num_episodes=200, num_envs=50, configs=None, seed=0, timing=(T, P, H), **kw
):
    env = PointTask(num_envs=num_envs, seed=seed)
    expert = PointExpert(env.config, ExpertConfig.from_quality(quality, **kw), seed=seed + 1)
    t, p, h = timing
    result = rollout_chunked(
        env, expert.chunk_act_fn(h), t, p, h, num_episodes, configs=configs, seed=seed
    )
    return env, result


@pytest.mark.parametrize("timing", [(T, P, H), (1, 0, 1), (1, 3, 10), (4, 2, 6)])
def test_clean_expert_solves_all_test_configs(timing):
    env, result = _rollout(
        num_episodes=10, num_envs=10, configs=PointTask().test_configs(), timing=timing
    )
    assert result.success_rate == 1.0
    assert result.subtask_success_rates == {"reach": 1.0}
    # A clean route stays well inside the time limit (~60 %), leaving room for a policy to be
    # worse than the expert.
    assert max(m["extra"]["length"] for m in result.metadata) <= 0.75 * env.time_limit
    assert result.mean_length <= 0.65 * env.time_limit


def test_clean_expert_solves_random_starts_on_both_routes():
    env, result = _rollout(num_episodes=400, num_envs=100, seed=4)
    assert result.success_rate == 1.0
    routes = np.array([route_taken(s["state"], env.config) for s, _ in result.episodes])
    upper = np.mean(routes == 1)
    assert np.all(routes != 0)
    assert 0.3 <= upper <= 0.7, upper  # multimodal: both routes well represented


def test_closed_loop_and_chunked_expert_execute_the_same_actions():
    # The chunk adapter predicts the prefix's effect exactly, so with T=1, P=0 the chunked
    # expert must produce exactly the closed-loop expert's actions (noise included, since both
    # draw from the same generator in the same order).
    cfg = ExpertConfig.from_quality(0.6)
    env = PointTask(num_envs=8, seed=5)
    configs = env.sample_configs(8)

    expert = PointExpert(env.config, cfg, seed=11)
    obs = env.reset(configs=configs)
    expert.reset(obs)
    done = np.zeros(8, bool)
    actions = [[] for _ in range(8)]
    while not done.all():
        obs, _, term, trunc, info = env.step(expert.act(obs))
        for i in np.flatnonzero(~done):
            actions[i].append(info["executed_action"][i])
        done |= term | trunc

    expert = PointExpert(env.config, cfg, seed=11)
    result = rollout_chunked(env, expert.chunk_act_fn(1), 1, 0, 1, 8, configs=configs)
    for i, (steps, _) in enumerate(result.episodes):
        np.testing.assert_allclose(steps["action"], np.array(actions[i]), atol=1e-6)


def test_quality_knob_degrades_success_with_real_failures():
    rates = {}
    failures = {}
    for q in (1.0, 0.5, 0.0):
        _, result = _rollout(quality=q, num_episodes=300, num_envs=100, seed=2)
        rates[q] = result.success_rate
        md = result.metadata
        failures[q] = (
            sum(m["extra"]["truncated"] for m in md),  # timeouts (hesitation, detours, slowness)
            sum(m["terminated"] and not m["success"] for m in md),  # collisions
        )
    assert rates[1.0] == 1.0 and failures[1.0] == (0, 0)
    assert 0.4 <= rates[0.5] <= 0.85
    assert rates[0.0] <= 0.25
    assert failures[0.0][0] > 0 and failures[0.0][1] > 0


def test_individual_knobs_cause_their_failure():
    # Corner cutting always drives into the obstacle.
    _, cut = _rollout(quality=1.0, num_episodes=50, cut_corner_prob=1.0)
    assert all(m["terminated"] and not m["success"] for m in cut.metadata)
    # Switching routes mid-approach is a long detour: much slower, often a timeout.
    _, clean = _rollout(quality=1.0, num_episodes=100)
    _, sw = _rollout(quality=1.0, num_episodes=100, switch_prob=1.0, switch_window=(16, 17))
    assert sw.mean_length > clean.mean_length + 15
    assert 0.2 <= np.mean([m["extra"]["truncated"] for m in sw.metadata]) <= 0.8
    # Hesitating longer than the slack in the time limit always times out.
    _, hes = _rollout(quality=1.0, num_episodes=50, hesitation_prob=1.0, hesitation_steps=(30, 30))
    assert hes.success_rate == 0.0


def test_expert_config_validation_and_errors():
    with pytest.raises(ValueError, match="quality"):
        ExpertConfig.from_quality(1.5)
    with pytest.raises(ValueError, match="speed"):
        ExpertConfig(speed=0.0)
    with pytest.raises(ValueError, match="hesitation_steps"):
        ExpertConfig(hesitation_steps=(5, 2))
    expert = PointExpert()
    env = PointTask(num_envs=2)
    obs = env.reset()
    with pytest.raises(RuntimeError, match="reset"):
        expert.act(obs)
    expert.reset(obs)
    with pytest.raises(ValueError, match="batch of 3"):
        expert.act({"state": np.zeros((3, 6), np.float32)})
    with pytest.raises(ValueError, match="horizon"):
        expert.chunk_act_fn(0)
