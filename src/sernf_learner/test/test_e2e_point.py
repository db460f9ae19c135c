"""End to end on the point task: IL → critic warm-up → offline RL → online RL improves success.

Runs ``config/point_full.yaml`` through the real trainer (CPU, fixed seeds): imitation on the
successful demos of a mixed-quality dataset, critic warm-up and offline RL on all demos, then a
few online iterations that collect with best-of-N (Alg. 2) in the vectorized env. Each stage is
evaluated on the same 200 fixed-seed episodes; the IL policy acts the way the paper deploys it
without a critic (most likely of N samples, §IV-D a), the RL policies by Alg. 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sernf_learner.configs import load_config
from sernf_learner.paired_statistics import mcnemar_exact
from sernf_learner.trainer import Trainer

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "config" / "point_full.yaml"


@pytest.mark.slow
def test_online_rl_beats_imitation_on_the_point_task(tmp_path):
    # The shipped config, but 800 of its 3,000 imitation updates, 3 of its 5 online iterations
    # and no offline-RL evaluation: the suite's 25-minute budget (the 5-seed figures in
    # docs/results.md use the whole config). The shorter imitation stage also leaves the RL
    # stages room to show what they add on one seed: with 3,000 updates seed 0's IL policy is
    # already at 0.895 (the benchmark's paired test over five seeds carries that claim).
    config = load_config(CONFIG, {"trainer.progress": False, "trainer.tensorboard": False, "il.steps": 800,
                                  "online_rl.iterations": 3, "trainer.eval.stages": ["il", "online_rl"]})
    assert config.trainer.eval.episodes >= 200
    t0 = time.perf_counter()
    summary = Trainer(config, tmp_path / "run", "full").run()
    elapsed = time.perf_counter() - t0
    results = summary["results"]
    report = {stage: (r["success_rate"], r["num_episodes"], r["selection"]) for stage, r in results.items()}
    print(json.dumps({"elapsed_s": round(elapsed, 1), "results": report}, indent=1))
    il, online = results["il"]["success_rate"], results["online_rl"]["success_rate"]
    assert results["il"]["num_episodes"] >= 200 and results["online_rl"]["num_episodes"] >= 200
    # Paired on the same 200 fixed episodes (one seed costs ~4 min; the 5-seed claim is
    # bench/learning.py's): a clear margin and an exact McNemar test, so one lucky stretch of
    # episodes cannot pass it.
    test = mcnemar_exact(results["online_rl"]["episode_success"], results["il"]["episode_success"])
    print(json.dumps({"mcnemar": test.to_dict()}))
    # The actor alone after RL gains about +0.1 over IL; the margin needs the critic's selection.
    assert online >= il + 0.25, report
    assert test.a_only > test.b_only and test.p_value < 0.01, (report, test)
