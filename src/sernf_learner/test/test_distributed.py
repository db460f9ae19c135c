"""Data-parallel training: two gloo processes with half batches take the same steps as one
process with the combined batch (sernf_learner.distributed)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sernf_learner import distributed
from sernf_learner.il import ILConfig, ImitationLearning
from sernf_learner.offline_rl import ActorConfig, OfflineRL, OfflineRLConfig
from sernf_learner.td_targets import CriticConfig, TargetCritic
from sernf_policy.encoders import EncoderConfig
from sernf_policy.fast_paths import reference_paths
from sernf_policy.policy import Policy, PolicyConfig

A, H, P, T, BATCH, STEPS = 3, 4, 1, 2, 8, 3
SPEC = {"hand": {"kind": "lowdim", "shape": [4]}, "cube": {"kind": "lowdim", "shape": [2]}}


def _policy() -> Policy:
    """A tiny policy without randomness in its updates: no dropout, no action noise."""
    torch.manual_seed(0)
    cfg = PolicyConfig.create(
        SPEC, A, T, P, H, encoder=EncoderConfig(token_dim=16),
        flow={"num_layers": 2, "hidden_dim": 16, "num_heads": 2, "noise_std": 0.0},
        critic={"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 16, "dropout": 0.0},
    )
    policy = Policy(cfg)
    policy.fit_normalizers(torch.linspace(-1, 1, 50)[:, None].expand(50, A))
    return policy


def _batches() -> list[dict]:
    gen = torch.Generator().manual_seed(1)

    def obs() -> dict:
        return {k: torch.randn(BATCH, T, v["shape"][0], generator=gen) for k, v in SPEC.items()}

    return [{
        "obs": obs(), "next_obs": obs(),
        "prefix": torch.rand(BATCH, P, A, generator=gen) * 1.8 - 0.9,
        "chunk": torch.rand(BATCH, H, A, generator=gen) * 1.8 - 0.9,
        "chunk_mask": torch.ones(BATCH, H),
        "next_prefix": torch.rand(BATCH, P, A, generator=gen) * 1.8 - 0.9,
        "reward": (torch.rand(BATCH, generator=gen) < 0.3).float(),
        "discount": torch.full((BATCH,), 0.9),
        "done": torch.zeros(BATCH),
        "is_offline": torch.ones(BATCH, dtype=torch.bool),
    } for _ in range(STEPS)]


def _shard(batch: dict, rank: int, world: int) -> dict:
    n = BATCH // world
    return {k: (_shard(v, rank, world) if isinstance(v, dict) else v[rank * n:(rank + 1) * n]) for k, v in batch.items()}


def _train(rank: int, world: int) -> dict[str, torch.Tensor]:
    """STEPS imitation updates, then STEPS offline-RL updates, on this rank's shard."""
    policy = _policy()
    distributed.broadcast_module(policy)
    il = ImitationLearning(policy, ILConfig(steps=STEPS, batch_size=BATCH, dropout=0.0))
    for batch in _batches():
        il.update(_shard(batch, rank, world))
    # sigma ~ 0: the sampled chunks no longer depend on which ranks' RNG drew the noise.
    rl = OfflineRL(policy, TargetCritic(policy), OfflineRLConfig(
        steps=STEPS, batch_size=BATCH, critic=CriticConfig(next_sigma=1e-7),
        actor=ActorConfig(dropout=0.0, sigma=1e-7)))
    for batch in _batches():
        rl.update(_shard(batch, rank, world))
    return {k: v.detach().clone().contiguous() for k, v in policy.state_dict().items()}


def _worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        assert distributed.world_size() == world and distributed.rank() == rank
        state = _train(rank, world)
        save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
    finally:
        distributed.shutdown()


def test_two_gloo_processes_match_one_process_with_the_combined_batch(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, 2, str(tmp_path / "rdv"), str(tmp_path))) for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]

    single = _train(0, 1)
    initial = _policy().state_dict()
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    moved = 0
    for name, want in single.items():
        for got in ranks:
            torch.testing.assert_close(got[name], want, rtol=1e-4, atol=2e-5, msg=name)
        moved += int(not torch.equal(want, initial[name]))
    assert moved > 20  # the updates did move the actor and the critic

    # Half a batch alone takes a different step: the comparison above can fail.
    alone = _train(0, 2)
    assert any(not torch.allclose(alone[k], single[k], rtol=1e-4, atol=2e-5) for k in single)


def test_single_process_helpers_are_no_ops():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    assert distributed.shard_batch_size(48) == 48
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 2.0)
    distributed.sync_gradients([param])
    assert torch.equal(param.grad, torch.full((3,), 2.0))
    value = torch.tensor(3.0)
    assert distributed.mean_over_ranks(value) is value
    assert distributed.init_from_env() is None or os.environ.get("WORLD_SIZE", "1") != "1"


def _adamw_steps(make, steps: int = 5) -> list[torch.Tensor]:
    """Parameters after ``steps`` AdamW steps on fixed gradients (two tensors of odd sizes)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(7, 3, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]
    optimizer = make(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
    return [p.detach() for p in params]


def test_make_adamw_is_fused_and_steps_as_torchs_plain_adamw():
    """Every stage's optimiser is torch's fused AdamW (one kernel over all tensors) with the
    stage's lr and weight decay and G2's betas / eps; its steps are the plain single-tensor
    AdamW's to float rounding. On the reference paths it is the multi-tensor one it replaced."""
    fused = distributed.make_adamw([torch.nn.Parameter(torch.zeros(2))], lr=3e-4, weight_decay=1e-4)
    assert fused.defaults["fused"] and not fused.defaults["foreach"]
    assert fused.defaults["lr"] == 3e-4 and fused.defaults["weight_decay"] == 1e-4
    assert fused.defaults["betas"] == (0.9, 0.999) and fused.defaults["eps"] == 1e-8
    with reference_paths():
        multi = distributed.make_adamw([torch.nn.Parameter(torch.zeros(2))], lr=3e-4, weight_decay=1e-4)
    assert multi.defaults["foreach"] and not multi.defaults["fused"]

    ours = _adamw_steps(lambda ps: distributed.make_adamw(ps, lr=0.05, weight_decay=0.1))
    plain = _adamw_steps(lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8,
                                                       foreach=False))
    start = _adamw_steps(lambda ps: torch.optim.SGD(ps, lr=0.0))
    for a, b, s in zip(ours, plain, start, strict=True):
        assert (a - s).abs().max() > 0.1  # the steps moved the parameters
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_acting_after_a_fused_optimiser_step_uses_the_new_weights():
    """Acting caches values derived from the weights (joined head weights, stacked critics),
    keyed by the parameters' version counters; the fused AdamW kernel does not move them, so
    gradient_step must. Acting after a step matches the reference paths (which cache nothing)."""
    torch.manual_seed(0)
    spec = {"state": {"kind": "lowdim", "shape": [3]}}
    policy = Policy(PolicyConfig.create(
        spec, action_dim=2, obs_history=1, prefix_len=1, horizon=3, encoder=EncoderConfig(token_dim=16),
        flow={"num_layers": 2, "hidden_dim": 16, "num_heads": 2},
        critic={"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 16}, num_samples=8))
    policy.fit_normalizers(torch.rand(100, 2) * 2 - 1)
    obs = {"state": torch.randn(1, 1, 3).numpy()}
    prefix = (torch.rand(1, 1, 2) * 2 - 1).numpy()

    def act():
        chunk, info = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(5))
        return chunk, info["q"]

    before = act()  # builds the acting caches
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = distributed.make_adamw(params, lr=0.05, weight_decay=0.0)
    policy.train()
    obs_t = {"state": torch.as_tensor(obs["state"])}
    prefix_norm = policy.action_normalizer.normalize(torch.as_tensor(prefix))
    chunk = torch.full((1, 3, 2), 0.5)
    loss = -policy.log_prob(obs_t, prefix_norm, chunk).mean() - policy.min_q(obs_t, prefix_norm, chunk[:, None]).mean()
    distributed.gradient_step(optimizer, loss)
    policy.eval()
    after = act()
    with reference_paths():
        reference = act()
    assert torch.as_tensor(after[1] - before[1]).abs().max() > 1e-3  # the step changed the scores
    torch.testing.assert_close(torch.as_tensor(after[0]), torch.as_tensor(reference[0]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.as_tensor(after[1]), torch.as_tensor(reference[1]), rtol=1e-4, atol=1e-4)


def test_init_from_env_refuses_an_incomplete_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        distributed.init_from_env("cpu")


def test_sernf_train_nproc_2_runs_the_offline_stages(tmp_path: Path, capsys):
    import json

    import yaml

    from sernf_learner.cli import main

    tiny = {
        "seed": 1,
        "policy": {"obs_history": 1, "prefix_len": 2, "horizon": 4, "token_dim": 16, "flow_layers": 2,
                   "flow_hidden": 16, "flow_heads": 2, "critic_d_model": 16, "critic_heads": 2,
                   "critic_layers": 1, "critic_ff": 16, "num_samples": 4},
        "data": {"generate_point_demos": 4, "gamma": 0.99},
        "trainer": {"tensorboard": False, "progress": False, "log_every": 1, "checkpoint_every": 2,
                    "keep_checkpoints": 100, "torch_num_threads": 1,
                    "eval": {"episodes": 2, "num_envs": 2, "num_samples": 2}},
        "il": {"steps": 3, "batch_size": 8},
        "critic_warmup": {"steps": 3, "batch_size": 8},
        "offline_rl": {"steps": 3, "batch_size": 8},
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "run"
    assert main(["offline", "--config", str(config), "--out", str(out), "--nproc", "2"]) == 0
    for stage in ("il", "critic_warmup", "offline_rl"):
        assert (out / f"policy_{stage}" / "model.safetensors").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines if "il/nll" in line]
    assert steps == sorted(set(steps)) == [1, 2, 3]  # one writer: each step logged once
    mid = json.loads((out / "checkpoints" / "ckpt-00-il-00000002" / "trainer.json").read_text())
    assert mid["world_size"] == 2
    ranks = mid["stage"]["sampler_ranks"]
    assert len(ranks) == 2 and ranks[0]["batch_size"] == ranks[1]["batch_size"] == 4
    assert ranks[0]["rng"] != ranks[1]["rng"]  # each rank draws its own shard
    capsys.readouterr()
    # A checkpoint of a 2-process run resumes with 2 processes only.
    assert main(["offline", "--config", str(config), "--out", str(out), "--resume"]) == 2
    assert "2 process" in capsys.readouterr().err


def test_data_parallel_runs_refuse_collecting_stages(tmp_path: Path, monkeypatch):
    from sernf_learner.configs import RunConfig
    from sernf_learner.trainer import Trainer

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="one process only"):
        Trainer(RunConfig(), tmp_path, "online_rl")
