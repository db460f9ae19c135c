"""Checkpoints: bit-exact round trip, atomic replacement, and every kind of bad file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sernf_policy import checkpoint as ckpt_mod
from sernf_policy.checkpoint import CheckpointError, file_sha256, write_checkpoint
from sernf_policy.config_io import to_jsonable
from sernf_policy.policy import CHECKPOINT_KIND, Policy


def assert_same_state(a: Policy, b: Policy) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture
def saved(tmp_path, tiny_policy):
    tiny_policy.fit_normalizers(
        np.random.default_rng(0).uniform(-2, 5, size=(64, 2)),
        observations={"hand": np.random.default_rng(1).normal(size=(64, 3))},
    )
    path = tmp_path / "ckpt"
    sha = tiny_policy.save(path, metadata={"step": 12, "stage": "il"})
    return tiny_policy, path, sha


def test_round_trip_is_bit_exact(saved, batch):
    policy, path, sha = saved
    assert sha == file_sha256(path / "model.safetensors")
    loaded = Policy.load(path)
    assert_same_state(policy, loaded)
    assert loaded.config == policy.config
    names = set(loaded.state_dict())
    assert any(n.endswith("keep_mask") for n in names)  # flow partitions travel along
    assert {"action_normalizer.low", "obs_normalizers.hand.high"} <= names
    obs, prefix = batch(2)
    out_a = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(3))
    out_b = loaded.act_batch(obs, prefix, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(out_a[0], out_b[0])
    for key in ("log_prob", "q", "index"):
        assert np.array_equal(out_a[1][key], out_b[1][key])
    header = json.loads((path / "config.json").read_text())
    assert header["format_version"] == 1 and header["metadata"] == {"step": 12, "stage": "il"}


def test_round_trip_with_images_and_no_critic(tmp_path, tiny_config):
    spec = {"cam": {"kind": "rgb", "shape": [32, 32, 3]}, "hand": {"kind": "lowdim", "shape": [3]}}
    policy = Policy(tiny_config(spec=spec, critic=False, num_samples=2))
    policy.save(tmp_path / "img")
    loaded = Policy.load(tmp_path / "img")
    assert_same_state(policy, loaded)
    assert any("running_mean" in n for n in loaded.state_dict())  # BatchNorm buffers included


def test_saving_again_replaces_atomically(saved, tiny_config):
    policy, path, _ = saved
    with torch.no_grad():
        policy.flow.layers[0].conditioner.head_b[-1].bias.add_(1.0)
    policy.save(path)
    assert torch.equal(
        Policy.load(path).flow.layers[0].conditioner.head_b[-1].bias,
        policy.flow.layers[0].conditioner.head_b[-1].bias,
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]  # no temp / old leftovers


def test_failed_save_keeps_the_previous_checkpoint(saved, monkeypatch):
    policy, path, sha = saved

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        policy.save(path)
    assert file_sha256(path / "model.safetensors") == sha
    Policy.load(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]


def test_corrupt_weights_fail_the_hash(saved):
    _, path, _ = saved
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256.*|corrupt"):
        Policy.load(path)


def test_truncated_weights_and_config(saved):
    _, path, _ = saved
    weights = path / "model.safetensors"
    full = weights.read_bytes()
    weights.write_bytes(full[: len(full) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Policy.load(path)
    weights.write_bytes(full)
    cfg = path / "config.json"
    cfg.write_text(cfg.read_text()[:50])
    with pytest.raises(CheckpointError, match="truncated.*config.json"):
        Policy.load(path)


def test_unreadable_safetensors_with_matching_hash(saved):
    _, path, _ = saved
    weights = path / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\x00" * 64)
    header = json.loads((path / "config.json").read_text())
    header["weights_sha256"] = file_sha256(weights)
    (path / "config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        Policy.load(path)


def test_wrong_version_kind_and_missing_files(saved, tmp_path):
    _, path, _ = saved
    cfg = path / "config.json"
    header = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**header, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        Policy.load(path)
    cfg.write_text(json.dumps({**header, "kind": "something_else"}))
    with pytest.raises(CheckpointError, match="something_else"):
        Policy.load(path)
    cfg.write_text(json.dumps({**header, "weights_file": "../elsewhere.safetensors"}))
    with pytest.raises(CheckpointError, match="weights_file"):
        Policy.load(path)
    cfg.write_text(json.dumps(header))
    os.remove(path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        Policy.load(path)
    with pytest.raises(CheckpointError, match="not found"):
        Policy.load(tmp_path / "nothing_here")


def _rewrite(path: Path, policy: Policy, tensors: dict, config=None) -> None:
    write_checkpoint(path, tensors, config if config is not None else policy.config, CHECKPOINT_KIND)


@pytest.mark.parametrize("problem", ["missing", "extra", "shape", "dtype"])
def test_mismatched_tensors_are_reported_by_name(saved, problem):
    policy, path, _ = saved
    tensors = dict(policy.state_dict())
    name = "flow.layers.0.conditioner.in_proj.weight"
    if problem == "missing":
        del tensors[name]
    elif problem == "extra":
        tensors["flow.bonus"] = torch.zeros(3)
        name = "flow.bonus"
    elif problem == "shape":
        tensors[name] = torch.zeros(5, 5)
    else:
        tensors[name] = tensors[name].double()
    _rewrite(path, policy, tensors)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        Policy.load(path)


def test_config_that_does_not_fit_the_weights(saved, tiny_config):
    policy, path, _ = saved
    other = tiny_config(critic=False)
    _rewrite(path, policy, dict(policy.state_dict()), config=other)
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        Policy.load(path)
    bad = to_jsonable(policy.config)
    bad["flow"]["num_layers"] = "sixteen"
    _rewrite(path, policy, dict(policy.state_dict()), config=bad)
    with pytest.raises(CheckpointError, match="invalid policy config"):
        Policy.load(path)
