"""bench/point_route_diagnosis.py measures what it says: the expert's first chunks lie on either
side of the start->goal line and never on it; chunks that go straight for the goal (what averaging
the routes gives) are all on it; the command line runs on an exported policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]


def test_the_expert_takes_either_route_and_straight_chunks_sit_on_the_line(bench_script):
    bench = bench_script("point_route_diagnosis")
    history, prefix, normal = bench.start_states(60, seed=1, T=2, P=2)
    expert = bench.expert_offsets(history, prefix, normal, H=8)
    summary = bench.summarize(expert)
    assert summary["on_line"] == 0.0
    assert 0.2 < np.mean(expert > 0.1) < 0.8 and 0.2 < np.mean(expert < -0.1) < 0.8
    assert bench.both_routes_fraction(expert) > 0.5  # four draws per start: usually both routes
    # Straight towards the goal, 8 steps of 0.05: no offset, every chunk on the line.
    state = history["state"][:, -1]
    heading = (state[:, 2:4] - state[:, :2]) / np.linalg.norm(state[:, 2:4] - state[:, :2], axis=1, keepdims=True)
    straight = np.repeat((0.05 * heading)[:, None, None, :], 8, axis=2)  # [n, 1, H, 2]
    on_line = bench.summarize(bench.offsets(straight, normal))
    assert on_line["on_line"] == 1.0 and on_line["bins"][5] + on_line["bins"][6] == 1.0  # the bins around 0
    assert bench.both_routes_fraction(bench.offsets(straight, normal)) == 0.0


def test_command_line_on_an_exported_policy(tmp_path):
    from sernf_policy.encoders import EncoderConfig
    from sernf_policy.policy import Policy, PolicyConfig

    config = PolicyConfig.create({"state": {"kind": "lowdim", "shape": [6]}}, 2, 2, 2, 8,
                                 encoder=EncoderConfig(token_dim=16),
                                 flow={"num_layers": 2, "hidden_dim": 16, "num_heads": 2}, critic=False)
    policy = Policy(config)
    policy.fit_normalizers(np.random.default_rng(0).uniform(-0.05, 0.05, size=(100, 2)))
    policy.save(tmp_path / "policy")
    out = tmp_path / "routes.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "point_route_diagnosis.py"), "--policy", str(tmp_path / "policy"),
         "--starts", "20", "--num-samples", "8", "--sigma", "0.5", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "within 0.05 of the line" in result.stdout and "most likely of 8, σ 0.5" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["expert"]["on_line"] == 0.0
    assert abs(sum(figures["sigma=0.5"]["candidates"]["bins"]) - 1.0) < 1e-3  # 12 bins rounded to 1e-4
