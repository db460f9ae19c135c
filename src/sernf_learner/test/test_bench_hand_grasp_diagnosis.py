"""bench/hand_grasp_diagnosis.py measures what it says: the expert reaches the object and closes
on it; an actor that only holds still covers no distance and never closes; the command-line
form prints the figures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]


def _load_bench():
    spec = importlib.util.spec_from_file_location("hand_grasp_diagnosis", REPO / "bench" / "hand_grasp_diagnosis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_an_actor_that_holds_still_covers_nothing_and_never_closes():
    bench = _load_bench()
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
