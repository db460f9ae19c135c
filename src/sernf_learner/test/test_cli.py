"""sernf-train: help text, config loading (typed, explicit, no eval), a tiny stage run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sernf_learner.cli import build_parser, main
from sernf_learner.configs import STAGES, RunConfig, load_config

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"

TINY = {
    "seed": 1,
    "policy": {"obs_history": 1, "prefix_len": 2, "horizon": 4, "token_dim": 16, "flow_layers": 2,
               "flow_hidden": 16, "flow_heads": 2, "critic_d_model": 16, "critic_heads": 2,
               "critic_layers": 1, "critic_ff": 16, "num_samples": 4},
    "data": {"generate_point_demos": 4, "gamma": 0.99},
    "trainer": {"tensorboard": False, "progress": False, "log_every": 1,
                "eval": {"episodes": 4, "num_envs": 4, "num_samples": 2}},
    "il": {"steps": 3, "batch_size": 8},
}


def test_help_documents_every_stage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for stage in (*STAGES, "offline", "--resume", "--out", "--config"):
        assert stage in text


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("point_*.yaml")), ids=lambda p: p.name)
def test_shipped_point_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.env.task == "point"


def test_shipped_point_configs_exist():
    assert (CONFIG_DIR / "point_offline.yaml").is_file()


def test_config_is_built_explicitly_and_validated(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "il": {"steps": 3, "learning_rate": 1.0}}))
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({**TINY, "il": {"dropout": 1.5}}))
    with pytest.raises(ValueError, match="dropout"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({**TINY, "trainer": {"eval": {"torch_threads": -1}}}))
    with pytest.raises(ValueError, match="torch_threads"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({**TINY, "data": {"point_demo_upper_route_prob": 1.5}}))
    with pytest.raises(ValueError, match="point_demo_upper_route_prob"):
        load_config(bad)
    evil = tmp_path / "evil.yaml"
    evil.write_text("il: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(yaml.YAMLError):
        load_config(evil)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    cfg = load_config(good, {"offline_rl.actor.bc_weight": 0.5, "il.steps": 7})
    assert cfg.offline_rl.actor.bc_weight == 0.5 and cfg.il.steps == 7
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cli_runs_a_stage_and_reports(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["il", "--config", str(config), "--out", str(out), "--set", "il.steps=2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"]["il"]["num_episodes"] == 4
    assert report["results"]["il"]["selection"] == "most_likely"
    assert (out / "policy_il" / "model.safetensors").is_file()
    assert (out / "summary.json").is_file() and (out / "metrics.jsonl").is_file()
    assert main(["il", "--config", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2


def test_parser_rejects_unknown_stages():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stage3", "--config", "x", "--out", "y"])
