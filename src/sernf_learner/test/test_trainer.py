"""Trainer: checkpoint format (no pickle), and resume == uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from sernf_data.store import EpisodeStore
from sernf_learner.configs import (
    DataConfig,
    EnvConfig,
    PolicySpec,
    RunConfig,
    TrainerConfig,
)
from sernf_learner.critic_warmup import CriticWarmupConfig
from sernf_learner.distill import DistillConfig
from sernf_learner.il import ILConfig
from sernf_learner.offline_rl import ActorConfig, OfflineRLConfig
from sernf_learner.online_rl import OnlineRLConfig
from sernf_learner.trainer import Trainer, flatten_state, rng_state, set_rng_state, unflatten_state
from sernf_policy.policy import Policy

REPO = Path(__file__).resolve().parents[3]


def tiny_config(**overrides) -> RunConfig:
    cfg = RunConfig(
        seed=3,
        policy=PolicySpec(obs_history=1, prefix_len=2, horizon=4, token_dim=16, flow_layers=2, flow_hidden=16,
                          flow_heads=2, critic_d_model=16, critic_heads=2, critic_layers=1, critic_ff=16,
                          num_samples=4),
        data=DataConfig(generate_point_demos=4, gamma=0.99),
        env=EnvConfig(num_envs=2),
        trainer=TrainerConfig(checkpoint_every=2, log_every=1, tensorboard=False, progress=False),
        il=ILConfig(steps=4, batch_size=16),
        critic_warmup=CriticWarmupConfig(steps=3, batch_size=16),
        offline_rl=OfflineRLConfig(steps=3, batch_size=16, actor=ActorConfig(update_every=3)),
        online_rl=OnlineRLConfig(iterations=2, episodes_per_iteration=2, updates_per_iteration=2, batch_size=16,
                                 num_samples=2),
        distill=DistillConfig(iterations=3, episodes_per_iteration=2, updates_per_iteration=2, batch_size=16,
                              buffer_capacity=64),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def final_state(out: Path) -> dict[str, torch.Tensor]:
    """Policy weights of the last stage plus the last checkpoint's tensors (targets, moments)."""
    ckpt = json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    state = {f"trainer/{k}": v for k, v in load_file(str(out / "checkpoints" / ckpt / "trainer.safetensors")).items()
             if not k.startswith("rng/")}
    policy = Policy.load(out / "checkpoints" / ckpt / "policy")
    state.update({f"policy/{k}": v for k, v in policy.state_dict().items()})
    return state


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# ------------------------------------------------------------------------------- state codec


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten_state({"opt": opt.state_dict(), "rng": rng_state()}, "s", tensors)
    save_file(tensors, str(tmp_path / "t.safetensors"))
    (tmp_path / "t.json").write_text(json.dumps(tree))
    restored = unflatten_state(json.loads((tmp_path / "t.json").read_text()), load_file(str(tmp_path / "t.safetensors")))

    net2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    net2.load_state_dict(net.state_dict())
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.5)
    opt2.load_state_dict(restored["opt"])
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    x = torch.randn(8, 3)
    for o, n in ((opt, net), (opt2, net2)):
        o.zero_grad()
        n(x).pow(2).mean().backward()
        o.step()
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_rng_states_round_trip():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    tensors: dict[str, torch.Tensor] = {}
    tree = json.loads(json.dumps(flatten_state(rng_state(), "rng", tensors)))
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(unflatten_state(tree, tensors))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_flatten_rejects_objects_it_cannot_store():
    with pytest.raises(TypeError):
        flatten_state({"x": object()}, "s", {})


# ------------------------------------------------------------------------- resume == straight


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("straight")
    summary = Trainer(tiny_config(), out, "full").run()
    assert summary["schedule"] == ["il", "critic_warmup", "offline_rl", "online_rl"]
    for stage in ("il", "critic_warmup", "offline_rl", "online_rl"):
        assert (out / f"policy_{stage}" / "model.safetensors").is_file()
    return out, final_state(out)


# Units: IL updates 1-4, critic warm-up 5-7, offline RL 8-10, online RL iterations 11-12.
@pytest.mark.parametrize("stop_after", [3, 6, 9, 11])
def test_resume_from_disk_equals_uninterrupted_run(tmp_path, uninterrupted, stop_after):
    out_straight, expected = uninterrupted
    out = tmp_path / "run"
    stopped = Trainer(tiny_config(), out, "full").run(stop_after=stop_after)
    assert "stopped_at" in stopped
    del stopped
    # A fresh trainer, rebuilt from what is on disk only.
    Trainer(tiny_config(), out, "full", resume=True).run()
    assert_bit_identical(expected, final_state(out))
    online = EpisodeStore(out / "online_replay", "r")
    reference = EpisodeStore(out_straight / "online_replay", "r")
    assert online.num_episodes == reference.num_episodes == 4
    np.testing.assert_array_equal(online.load_arrays().arrays["action"], reference.load_arrays().arrays["action"])
    # The metrics file reads like one run: every logged step once.
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    updates = [s for s, line in zip(steps, (out / "metrics.jsonl").read_text().splitlines(), strict=True)
               if "critic/loss" in json.loads(line) or "il/nll" in json.loads(line)]
    assert len(updates) == len(set(updates))


def test_resume_after_a_kill_between_collecting_and_checkpointing(tmp_path, uninterrupted, monkeypatch):
    """Online episodes already appended by the killed run are not appended twice."""
    _, expected = uninterrupted
    out = tmp_path / "run"
    original = Trainer.save_checkpoint

    def no_online_checkpoints(self):
        if self._stage is not None and self._stage.name == "online_rl" and self.step > 0:
            return None
        return original(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", no_online_checkpoints)
    Trainer(tiny_config(), out, "full").run(stop_after=11)  # iteration 0 collected, no checkpoint
    assert EpisodeStore(out / "online_replay", "r").num_episodes == 2
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    Trainer(tiny_config(), out, "full", resume=True).run()
    assert EpisodeStore(out / "online_replay", "r").num_episodes == 4
    assert_bit_identical(expected, final_state(out))


def test_resume_without_checkpoint_starts_fresh_and_finished_run_is_a_no_op(tmp_path):
    cfg = tiny_config()
    out = tmp_path / "run"
    Trainer(cfg, out, "il", resume=True).run()  # nothing to resume: a normal run
    before = final_state(out)
    Trainer(cfg, out, "il", resume=True).run()  # already finished
    assert_bit_identical(before, final_state(out))
    with pytest.raises(ValueError, match="schedule"):
        Trainer(cfg, out, "offline", resume=True)


def test_action_margin_sets_the_normalizers_headroom(tmp_path):
    """The fitted action normalizer maps the offline data onto ±1/(1 + 2·margin); the low-dim
    observation normalizers keep the default headroom."""
    spans = {}
    for margin in (0.05, 0.25):
        cfg = tiny_config(il=ILConfig(steps=1, batch_size=16))
        cfg.policy.action_margin = margin
        out = tmp_path / f"m{margin}"
        Trainer(cfg, out, "il").run()
        policy = Policy.load(out / "policy_il")
        store = EpisodeStore(out / cfg.data.offline_uri, mode="r")
        arrays = store.load_arrays().arrays
        actions = policy.action_normalizer.normalize(torch.tensor(arrays["action"], dtype=torch.float32))
        spans[margin] = actions.abs().amax(dim=0)
        assert torch.allclose(spans[margin], torch.full_like(spans[margin], 1 / (1 + 2 * margin)), atol=1e-5)
        key = next(iter(policy.obs_normalizers))
        obs = policy.obs_normalizers[key].normalize(torch.tensor(arrays[key], dtype=torch.float32))
        assert float(obs.abs().amax()) == pytest.approx(1 / 1.1, abs=1e-5)
    assert bool((spans[0.25] < spans[0.05]).all())
    for bad in (-0.1, 1.0, float("nan"), True):
        with pytest.raises(ValueError, match="action_margin"):
            PolicySpec(action_margin=bad)


def test_distillation_resumes_exactly(tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    Trainer(tiny_config(), straight, "distill").run()
    Trainer(tiny_config(), run, "distill").run(stop_after=2)
    Trainer(tiny_config(), run, "distill", resume=True).run()
    assert (run / "policy_distill" / "model.safetensors").is_file()
    assert_bit_identical(final_state(straight), final_state(run))


def test_checkpoints_hold_no_pickle_and_are_pruned(tmp_path):
    cfg = tiny_config()
    out = tmp_path / "run"
    Trainer(cfg, out, "offline").run()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert len(ckpts) == cfg.trainer.keep_checkpoints
    files = {p.name for p in (out / "checkpoints" / ckpts[-1]).rglob("*") if p.is_file()}
    assert files == {"trainer.safetensors", "trainer.json", "model.safetensors", "config.json"}
    state = json.loads((out / "checkpoints" / ckpts[-1] / "trainer.json").read_text())
    assert state["stage_index"] == 3 and state["step"] == 0
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


# ------------------------------------------------------------------------- SIGKILL variant


def _write_yaml(path: Path, cfg: RunConfig) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict()))


def _cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        str(REPO / "src" / p) for p in ("sernf_data", "sernf_learner", "sernf_policy", "sernf_sim")))
    return subprocess.Popen([sys.executable, "-m", "sernf_learner.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkilled_run_resumes_to_the_same_result(tmp_path):
    cfg = tiny_config(il=ILConfig(steps=250, batch_size=16), trainer=TrainerConfig(
        checkpoint_every=25, log_every=10, tensorboard=False, progress=False))
    config = tmp_path / "tiny.yaml"
    _write_yaml(config, cfg)
    ref, run = tmp_path / "ref", tmp_path / "run"
    straight = _cli(["offline", "--config", str(config), "--out", str(ref)])
    victim = _cli(["offline", "--config", str(config), "--out", str(run)])
    pointer = run / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        name = json.loads(pointer.read_text())["checkpoint"] if pointer.exists() else ""
        if "-il-" in name and int(name.rsplit("-", 1)[1]) >= 50:  # a checkpoint inside Stage I
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = _cli(["offline", "--config", str(config), "--out", str(run), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert straight.wait(timeout=300) == 0, straight.stderr.read().decode()
    assert_bit_identical(final_state(ref), final_state(run))
