"""bench/critic_ranking.py: how a critic's score of recorded chunks ranks what followed them (the
return to go, and the outcome of episodes not yet rewarded), at decision steps, from recorded
episodes in the training format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sernf_policy.policy import Policy, PolicyConfig

T, P, H, A = 2, 1, 3, 2
SPEC = {"state": {"kind": "lowdim", "shape": [3]}}


def episode(rng: np.random.Generator, length: int, success: bool, sign: float,
            rewards: dict[int, float] | None = None) -> tuple[dict, dict]:
    """Random steps whose actions carry ``sign`` in their first dimension from step 1 on."""
    actions = rng.uniform(-0.5, 0.5, size=(length, A)).astype(np.float32)
    actions[1:, 0] = sign * rng.uniform(0.1, 0.9, size=length - 1)
    reward = np.zeros(length, dtype=np.float32)
    for step, value in (rewards or {}).items():
        reward[step] = value
    steps = {"state": rng.normal(size=(length, 3)).astype(np.float32), "action": actions, "reward": reward}
    return steps, {"success": success, "subtask_success": {"grasp": not success}}


def first_action_score(obs, prefix, chunk):
    return chunk[:, 0, 0].astype(np.float64)


def test_auc_follows_the_score_and_counts_ties_as_half(bench_script):
    bench = bench_script("critic_ranking")
    # Hand-worked: successes {3, 1}, failures {2, 1, 0}: pairs won 3 + 1.5 of 6.
    r = bench.ranking(np.array([3.0, 2.0, 1.0, 1.0, 0.0]), np.array([True, False, True, False, False]))
    assert r["auc"] == pytest.approx(4.5 / 6) and (r["episodes"], r["successes"]) == (5, 2)
    assert r["mean_score_success"] == pytest.approx(2.0) and r["mean_score_failure"] == pytest.approx(1.0)
    only = bench.ranking(np.array([1.0, 2.0]), np.array([True, True]))
    assert only["auc"] is None and only["p"] is None


def test_decision_steps_take_the_recorded_chunk_and_outcome(bench_script):
    bench = bench_script("critic_ranking")
    rng = np.random.default_rng(0)
    episodes = [episode(rng, 12, True, +1.0) for _ in range(6)] + [episode(rng, 12, False, -1.0) for _ in range(6)]
    episodes.append(episode(rng, 4, True, +1.0))  # too short for a chunk at step 2: left out there
    rows = bench.rank_episodes(first_action_score, episodes, [0, 2], ["state"], (T, P, H))
    # At step 0 the chunk starts at action P = 1, which carries the sign: a perfect ranking.
    assert rows[0]["auc"] == 1.0 and rows[0]["episodes"] == 13 and rows[0]["p"] < 0.01
    assert rows[1]["episodes"] == 12 and rows[1]["auc"] == 1.0
    assert rows[0]["spearman"] is None  # no rewards at all: nothing to correlate with
    d = bench.decisions_at(episodes, 2, ["state"], (T, P, H))
    np.testing.assert_array_equal(d.chunk[0], episodes[0][0]["action"][3:6])
    np.testing.assert_array_equal(d.prefix[0], episodes[0][0]["action"][2:3])
    np.testing.assert_array_equal(d.obs["state"][0], episodes[0][0]["state"][1:3])
    # The history before step 0 repeats the first observation, as in training.
    d0 = bench.decisions_at(episodes, 0, ["state"], (T, P, H))
    np.testing.assert_array_equal(d0.obs["state"][0], episodes[0][0]["state"][[0, 0]])
    # Another outcome: the grasp flags are the reverse of success here, and so is the ranking.
    grasp = bench.rank_episodes(first_action_score, episodes, [0], ["state"], (T, P, H), subtask="grasp")
    assert grasp[0]["auc"] == 0.0 and grasp[0]["successes"] == 6


def test_return_to_go_and_episodes_already_rewarded(bench_script):
    bench = bench_script("critic_ranking")
    rng = np.random.default_rng(2)
    # Successes rewarded at step 1 (a grasp) and step 8; failures only at step 8, less.
    wins = [episode(rng, 10, True, +1.0, {1: 1.0, 8: 1.0}) for _ in range(4)]
    losses = [episode(rng, 10, False, -1.0, {8: 0.5}) for _ in range(4)]
    d = bench.decisions_at(wins + losses, 1, ["state"], (T, P, H), gamma=0.5)
    np.testing.assert_allclose(d.return_to_go, [1.0 + 0.5**7] * 4 + [0.5 * 0.5**7] * 4)
    assert not d.rewarded_before.any()
    d2 = bench.decisions_at(wins + losses, 2, ["state"], (T, P, H), gamma=0.5)
    assert d2.rewarded_before.tolist() == [True] * 4 + [False] * 4
    np.testing.assert_allclose(d2.return_to_go, [0.5**6] * 4 + [0.5 * 0.5**6] * 4)
    row = bench.rank_episodes(first_action_score, wins + losses, [2], ["state"], (T, P, H), gamma=0.5)[0]
    # The score follows the return to go; the outcome is ranked only among the 4 episodes
    # not yet rewarded (all failures here: no AUC).
    # Hand-worked: score ranks 5-8 for the wins, 1-4 for the losses; return ranks 6.5 and 2.5:
    # covariance 4, variances 5.25 and 4.
    assert row["spearman"] == pytest.approx(4 / np.sqrt(21)) and row["scored"] == 8
    assert (row["episodes"], row["successes"], row["auc"]) == (4, 0, None)


def test_policy_min_q_scores_what_the_policy_scores(bench_script):
    bench = bench_script("critic_ranking")
    torch.manual_seed(0)
    policy = Policy(PolicyConfig.create(SPEC, A, T, P, H))  # training mode, as Policy.load leaves it
    assert policy.critic.config.dropout > 0
    policy.fit_normalizers(torch.rand(50, A) * 4 - 2)
    rng = np.random.default_rng(1)
    episodes = [episode(rng, 8, bool(i % 2), 1.0) for i in range(4)]
    d = bench.decisions_at(episodes, 1, ["state"], (T, P, H))
    obs, prefix, chunk = d.obs, d.prefix, d.chunk
    got = bench.policy_min_q(policy)(obs, prefix, chunk)
    assert policy.training  # given back as it was
    np.testing.assert_array_equal(bench.policy_min_q(policy)(obs, prefix, chunk), got)  # no dropout draws
    policy.eval()
    with torch.no_grad():
        norm = policy.action_normalizer.normalize
        want = policy.min_q({"state": torch.as_tensor(obs["state"])}, norm(torch.as_tensor(prefix)),
                            norm(torch.as_tensor(chunk))[:, None])[:, 0]
    np.testing.assert_allclose(got, want.double().numpy(), rtol=1e-6)
    assert got.shape == (4,) and np.ptp(got) > 0  # the chunks differ, and so do their scores
