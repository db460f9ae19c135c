"""The control-plane fault campaign, short (bench/fault_campaign.py runs it with 20 kills).

See tests/fault_campaign.py for what each trial checks. Hold latency is judged with a 1 s
limit here (a loaded CI machine must not fail on scheduling); the bench applies the strict
200 ms + one tick and prints it.
"""

from __future__ import annotations

import fault_campaign as fc
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def _assert_all_passed(trials: list[fc.Trial]) -> None:
    print("\n" + fc.table(trials))
    failed = [f"{t.kind}: {t.detail}" for t in trials if not t.passed]
    assert not failed, "\n".join(failed)


def test_policy_refuses_bad_inputs_foreign_checkpoints_rewards_and_end(ros_env, tmp_path):
    trials = fc.policy_trust_campaign(tmp_path, repeats=1, strict_latency=False)
    kinds = {t.kind for t in trials}
    assert kinds == {"foreign checkpoint", "bad observation", "injected reward", "foreign END",
                     "recorded episode unchanged"}
    assert sum(t.kind == "bad observation" for t in trials) == len(fc.BAD_OBSERVATIONS)
    _assert_all_passed(trials)


def test_learner_killed_at_random_loses_no_episode_and_leaves_no_temp(ros_env, tmp_path):
    trials = fc.learner_kill_campaign(tmp_path, kills=3, seed=1)
    assert sum(t.kind == "learner kill" for t in trials) == 3
    _assert_all_passed(trials)
