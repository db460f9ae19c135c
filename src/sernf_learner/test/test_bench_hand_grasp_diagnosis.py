"""bench/hand_grasp_diagnosis.py measures what it says: the expert reaches the object and closes
on it; an actor that only holds still covers no distance and never closes; the command-line
form prints the figures; --fit-demos scores the recorded chunks as a perfect fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]


def test_clean_expert_reaches_the_cylinder_and_closes_on_it(tmp_path):
    out = tmp_path / "expert.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "hand_grasp_diagnosis.py"), "--expert", "clean", "--object", "cylinder",
         "--episodes", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "close_xy_distance_m" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["success"] == 1.0 and figures["grasp"] == 1.0 and figures["closed_fraction"] == 1.0
    assert figures["covered_after_decision_1"] > 0.7
    assert figures["close_xy_distance_m"][1] < 0.015  # closes over the cylinder (radius 22 mm)
    assert 20 < figures["first_chunk_speed_mm_per_step"][1] <= 30  # near the env's 30 mm limit
    # It picks an object: the closing point is at the cylinder, not between the two objects.
    assert figures["close_nearer_object_distance_m"][1] < 0.015 < figures["close_midpoint_distance_m"][1]


def test_an_actor_that_holds_still_covers_nothing_and_never_closes(bench_script):
    bench = bench_script("hand_grasp_diagnosis")
    env = bench.make_env("nominal", num_envs=3, render_images=False, seed=5)

    def hold(obs, prefix):  # repeat the last queued action with zero motion: the hand stays put
        chunk = np.repeat(prefix[:, -1:], 10, axis=1).copy()
        chunk[:, :, bench.POS] = 0.0
        return chunk

    figures = bench.diagnose(env, hold, "box", 3, (1, 3, 10), seed=5)
    assert figures["success"] == 0.0 and figures["grasp"] == 0.0
    assert figures["first_chunk_speed_mm_per_step"] == [0.0, 0.0, 0.0]
    assert abs(figures["covered_after_decision_1"]) < 0.01  # the arm only settles (micrometres)
    assert figures["closed_fraction"] == 0.0 and figures["close_xy_distance_m"] is None


def test_fit_to_demos_is_zero_for_the_recorded_chunks_and_the_path_for_holding_still(bench_script):
    bench = bench_script("hand_grasp_diagnosis")
    from sernf_sim.hand_pick_place.demos import hand_demo_dataset

    timing = (1, 3, 10)
    episodes = hand_demo_dataset(n=4, seed=3, num_envs=4)
    keys = ["ee_pose", "hand_joints", "object_state"]

    def replay(obs, prefix):  # each demonstration's own chunk, found by its object layout
        chunks = []
        for layout in obs["object_state"][:, -1]:
            match = [s["action"] for s, _ in episodes if np.array_equal(s["object_state"][0], layout)]
            assert len(match) == 1
            chunks.append(match[0][3:13])
        return np.stack(chunks)

    def hold(obs, prefix):
        chunk = np.repeat(prefix[:, -1:], 10, axis=1).copy()
        chunk[:, :, bench.POS] = 0.0
        return chunk

    limits = (0.03, 0.3)  # the env's max translation / rotation per step (HandPickPlaceConfig)
    exact = bench.fit_to_demos(replay, episodes, keys, 0, timing, *limits)
    assert exact["demonstrations"] == 4 and exact["path_error_m"] == 0.0
    assert exact["demo_path_length_m"] > 0.05 and exact["nearest_other_demo_m"] > 0.0
    still = bench.fit_to_demos(hold, episodes, keys, 0, timing, *limits)
    # holding still misses by the mean distance along the demonstrated path: a large error
    assert still["path_error_m"] > 0.3 * still["demo_path_length_m"]
