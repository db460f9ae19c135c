"""The main job end to end (`python -m sernf.demo`) with tiny budgets.

Runs the real command in a subprocess with ``config/demo_tiny.yaml`` (a handful of demos, a few
updates per stage, one online iteration of one rollout through the ROS graph, four evaluation
episodes per stage) and checks what it writes: ``summary.json`` with the required keys, the
learning-curve PNG, and that Stage IV really went through the sim robot, policy and learner
nodes (their logs, the policy's replay store, the learner's checkpoint). Whether the method
improves success is what the full demo measures (config/demo_hand.yaml), not CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sernf import demo

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "config" / "demo_tiny.yaml"
STAGES = ("il", "critic_warmup", "offline_rl", "online_rl")


def test_both_demo_configs_load():
    for name in ("demo_hand.yaml", "demo_tiny.yaml"):
        cfg, run, _ = demo.load_demo_config(REPO / "config" / name)
        assert run.env.task == "hand_pick_place"
        assert run.policy.v_max == 2.0  # two-stage reward: returns up to 2
        assert cfg.dataset.num_demos >= 1


def test_policy_node_parameters_are_checked():
    base = demo.load_demo_config(TINY)[2]["demo"]
    assert demo.DemoConfig(policy_node_parameters={"stale_after_s": 1.0}).policy_node_parameters
    with pytest.raises(ValueError, match="not declared"):
        demo.DemoConfig(policy_node_parameters={"stale_after": 1.0})
    with pytest.raises(ValueError, match="set by the online stage"):
        demo.DemoConfig(policy_node_parameters={"replay_uri": "/tmp/elsewhere"})
    assert base["policy_node_parameters"]["workspace_high"] == [0.03, 0.03, 0.25]


def test_two_proportion_test_matches_a_hand_computation():
    # 0.30 vs 0.45 over 200 + 200: pooled p = 0.375, se0 = sqrt(.375*.625*(2/200)) = 0.04841
    t = demo.two_proportion_test(0.30, 200, 0.45, 200)
    assert t["z"] == pytest.approx(0.15 / 0.048412, rel=1e-3)
    assert t["p_value_one_sided"] == pytest.approx(0.000965, rel=0.02)
    lo, hi = demo.wilson_interval(0, 50)
    assert lo == 0.0 and 0.0 < hi < 0.1


def test_the_verdict_uses_the_paired_test_when_both_rows_kept_their_episodes(tmp_path):
    """Same success rates, opposite verdicts: the unpaired z-test cannot tell 0.30 from 0.40 on
    100 + 100 episodes at alpha 0.01, the paired test can when the gain is consistent (the new
    policy wins 10 episodes and loses none)."""
    base = [1] * 30 + [0] * 70
    new = [1] * 40 + [0] * 60
    run = demo.load_demo_config(TINY)[1]

    def summary(with_episodes):
        results = {s: {"success_rate": sum(v) / 100, "num_episodes": 100, "subtask_success_rates": {},
                       **({"episode_success": v} if with_episodes else {})}
                   for s, v in (("il", base), ("online_rl", new))}
        return demo.build_summary(run, results, {"episodes": 8, "successes": 4}, {"episodes": 1, "successes": 0},
                                  [], 1.0, tmp_path, TINY)

    unpaired, paired = summary(False)["significance"]["online_rl_vs_il"], summary(True)["significance"]["online_rl_vs_il"]
    assert "paired" not in unpaired and not unpaired["significant"]
    assert unpaired["p_value_one_sided"] > 0.05
    assert paired["paired"]["p_value_one_sided"] == pytest.approx(0.5 ** 10)
    assert paired["significant"]
    assert "exact McNemar one-sided p = 0.00098" in demo.format_significance(summary(True))


def test_learning_curve_starts_stage_iv_on_its_own_layouts(tmp_path):
    """Stage IV's line starts from the offline policy evaluated on the per-iteration layouts
    (iteration 0), not from the stage evaluation over all layouts."""
    records = [
        demo.start_record({"success_rate": 0.5, "mean_return": 1.0, "num_episodes": 50}),
        {"stage": "online_rl", "iteration": 1, "online/episodes": 10.0, "online/success": 0.2,
         "eval/success": 0.54},
    ]
    results = {s: {"success_rate": 0.35, "num_episodes": 300} for s in STAGES}
    curve = demo.learning_curve(records, results, episodes_per_iteration=10)
    evals = sorted((p for p in curve if p["kind"] == "eval"), key=lambda p: p["online_rollouts"])
    assert [(p["online_rollouts"], p["success"]) for p in evals] == [(0, 0.5), (10, 0.54)]
    # One collected-rollouts point (iteration 1 only) and the four stage evaluations.
    assert [p["online_rollouts"] for p in curve if p["kind"] == "collected"] == [10]
    assert sum(p["kind"] == "stage_eval" for p in curve) == 4
    png = tmp_path / "curve.png"
    demo.plot_learning_curve(curve, 300, 50, png, "t")
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
@pytest.mark.ros
def test_demo_runs_end_to_end_and_writes_its_outputs(tmp_path, ros_env):
    out = tmp_path / "run"
    env = {**ros_env, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sernf.demo", "--config", str(TINY), "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < 300, f"tiny demo took {elapsed:.0f} s"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluation_episodes"] == 4
    assert set(STAGES) <= set(summary["stages"])
    for stage in STAGES:
        s = summary["stages"][stage]
        assert 0.0 <= s["success"] <= 1.0
        assert set(s["subtask_success"]) == {"grasp", "place"}
        assert s["episodes"] == 4
        # What the robot's safety hold would have stopped, beside the in-process figure.
        assert 0.0 <= s["joints_past_range"] <= 1.0 and 0.0 <= s["success_if_held"] <= s["success"]
    assert "online_rl_vs_il" in summary["significance"]
    # Every row kept its episodes, so the final policy is compared with imitation pair by pair.
    for stage in STAGES:
        assert len(summary["stages"][stage]["episode_success"]) == 4
    paired = summary["significance"]["online_rl_vs_il"]["paired"]
    assert paired["episodes"] == 4 and 0.0 <= paired["p_value_one_sided"] <= 1.0
    assert summary["data"]["offline"]["episodes"] == 8
    assert summary["data"]["online"]["episodes"] == 1
    # Stage IV ran through the ROS graph: the policy node recorded the rollouts into its store,
    # the learner node ingested them, trained and announced a checkpoint the policy reloaded.
    assert "ROS graph" in summary["online_stage"]
    graph = out / "online_graph"
    for node in ("sim_robot", "policy", "learner"):
        assert (graph / "logs" / f"{node}.log").stat().st_size > 0, node
    iterations = [json.loads(line) for line in (graph / "iterations.jsonl").read_text().splitlines()]
    assert len(iterations) == 1 and len(iterations[0]["episodes"]) == 1
    assert iterations[0]["checkpoint_step"] > 0
    assert Path(iterations[0]["checkpoint"]).is_relative_to(graph / "learner")
    from sernf_data.store import EpisodeStore

    replay = EpisodeStore(str(graph / "replay" / "online.zarr"), mode="r")
    assert replay.num_episodes == 1
    # demo_tiny.yaml's small pose box: the iteration's last episode ended in a safety hold, and
    # the online stage still went on to the learner's checkpoint and its evaluation.
    last = replay.read_episode(list(replay.episode_ids())[-1])[1]
    assert last["extra"]["end_reason"].startswith("safety hold: ee_pose"), last["extra"]
    # The learning curve's Stage IV line starts from the offline policy on the per-iteration
    # evaluation's own episodes.
    start = json.loads((graph / "start_evaluation.json").read_text())
    assert start["num_episodes"] == 4
    starts = [p for p in summary["learning_curve"] if p["kind"] == "eval" and p["online_rollouts"] == 0]
    assert [p["success"] for p in starts] == [start["success_rate"]]
    png = (out / "learning_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert "HAND PICK-AND-PLACE SUCCESS RATES" in proc.stdout
    assert "SERNF (full)" in proc.stdout
    assert "would have stopped (place success if they count as failures): il " in proc.stdout

    # A finished run resumes to the same results without training again.
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((out / "summary.json").read_text())
    assert {k: v["success"] for k, v in resumed["stages"].items()} == {k: v["success"] for k, v in summary["stages"].items()}
    assert resumed["learning_curve"] == summary["learning_curve"]
    # A second fresh run into the same directory is refused (it would mix two runs' data).
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
