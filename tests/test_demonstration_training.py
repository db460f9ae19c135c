"""Demonstration bags -> sernf-bag2zarr -> Stage I (imitation) with sernf-train, a tiny run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src" / "sernf_data" / "test"))

import synthetic_bags as sb  # noqa: E402 - analytic demonstration bags

from sernf_data.bag2zarr import ConversionConfig, convert_bags, format_end_reason  # noqa: E402
from sernf_data.store import EpisodeStore  # noqa: E402
from sernf_learner.cli import main as train  # noqa: E402

TINY = {
    "seed": 1,
    "policy": {"obs_history": 1, "prefix_len": 2, "horizon": 4, "token_dim": 16, "flow_layers": 2,
               "flow_hidden": 16, "flow_heads": 2, "critic_d_model": 16, "critic_heads": 2,
               "critic_layers": 1, "critic_ff": 16, "num_samples": 4},
    "data": {"offline_uri": "offline_replay", "gamma": 0.99},
    "trainer": {"tensorboard": False, "progress": False, "log_every": 1, "eval": {"episodes": 0}},
    "il": {"steps": 3, "batch_size": 4},
}


def test_converted_demonstrations_train_stage_one(tmp_path, capsys):
    bags = [sb.write_demo_bag(tmp_path / f"bag{i}", sb.DemoBag(duration=3.0, episodes=[
        (0.05, 2.9, format_end_reason("operator", {"retrieve": True, "cut": i % 2 == 0}))]))
        for i in range(3)]
    run = tmp_path / "run"
    config = ConversionConfig(image_topics={"front_rgb": "/cameras/front/image_raw"})
    report = convert_bags(bags, run / "offline_replay", config)
    assert report.episodes == 3 and not report.skipped
    assert EpisodeStore(run / "offline_replay").spec.action_dim == 10
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert train(["il", "--config", str(tmp_path / "tiny.yaml"), "--out", str(run)]) == 0
    capsys.readouterr()
    assert (run / "policy_il" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    nll = [r["il/nll"] for r in rows if r.get("stage") == "il" and "il/nll" in r]
    assert len(nll) == 3 and all(math.isfinite(v) for v in nll)
