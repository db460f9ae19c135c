"""Training in bf16 mixed precision (``trainer.precision: bf16``): the same updates as float32
up to bf16 rounding, float32 weights, every stage of the trainer, and a run that still learns."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_trainer import tiny_config

from sernf_learner.configs import SCHEDULES, TrainerConfig
from sernf_learner.il import ILConfig, ImitationLearning
from sernf_learner.offline_rl import ActorConfig, OfflineRL, OfflineRLConfig
from sernf_learner.td_targets import CriticConfig, TargetCritic
from sernf_learner.trainer import Trainer
from sernf_policy.encoders import EncoderConfig
from sernf_policy.policy import Policy, PolicyConfig

SPEC = {"joints": {"kind": "lowdim", "shape": [5]}, "object": {"kind": "lowdim", "shape": [3]}}
A, T, P, H = 4, 2, 2, 6


def _policy(seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    cfg = PolicyConfig.create(SPEC, A, T, P, H, encoder=EncoderConfig(token_dim=32),
                              flow={"num_layers": 4, "hidden_dim": 32, "num_heads": 2},
                              critic={"d_model": 32, "num_heads": 2, "num_layers": 1, "ff_dim": 32})
    policy = Policy(cfg)
    policy.fit_normalizers(torch.rand(500, A) * 2 - 1)
    return policy


def _batch(n: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def obs() -> dict:
        return {k: torch.randn(n, T, v["shape"][0], generator=gen) for k, v in SPEC.items()}

    return {
        "obs": obs(), "next_obs": obs(),
        "prefix": torch.rand(n, P, A, generator=gen) * 2 - 1,
        "chunk": torch.rand(n, H, A, generator=gen) * 1.8 - 0.9,
        "chunk_mask": torch.ones(n, H),
        "next_prefix": torch.rand(n, P, A, generator=gen) * 2 - 1,
        "reward": (torch.rand(n, generator=gen) < 0.2).float(),
        "discount": torch.full((n,), 0.99**H),
        "done": (torch.rand(n, generator=gen) < 0.05).float(),
        "is_offline": torch.ones(n, dtype=torch.bool),
    }


def _learner(precision: str) -> OfflineRL:
    policy = _policy()
    return OfflineRL(policy, TargetCritic(policy), OfflineRLConfig(steps=1, batch_size=64, critic=CriticConfig(),
                                                                  actor=ActorConfig()), precision)


def test_a_bf16_update_is_the_float32_update_up_to_rounding():
    """Same model, same batch: the bf16 step moves every parameter group the way the float32
    step does, the losses agree to bf16 accuracy, and weights and moments stay float32."""
    full, mixed = _learner("fp32"), _learner("bf16")
    batch = _batch(64, 0)
    m32, m16 = full.update(batch), mixed.update(batch)
    for key in ("critic/loss", "critic/q_mean", "actor/q", "actor/bc_nll"):
        assert math.isfinite(m16[key])
        assert m16[key] == pytest.approx(m32[key], rel=0.02, abs=0.02), key
    assert m16["critic/loss"] != m32["critic/loss"] or m16["actor/bc_nll"] != m32["actor/bc_nll"]  # bf16 did run
    # The last gradients (critic: its TD step; flow: the actor step, which froze the critic)
    # point the same way. (AdamW's first step is about lr * sign(grad), whose signs flip for
    # gradients near zero, so the steps themselves are compared by the losses above.)
    for part in ("flow.", "critic."):
        a = torch.cat([p.grad.flatten() for n, p in full.policy.named_parameters() if n.startswith(part)])
        b = torch.cat([p.grad.flatten() for n, p in mixed.policy.named_parameters() if n.startswith(part)])
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.98, part
        assert all(p.grad.dtype == torch.float32 for n, p in mixed.policy.named_parameters() if n.startswith(part))
    assert all(p.dtype == torch.float32 for p in mixed.policy.parameters())
    for opt in (mixed.critic_optimizer, mixed.actor_optimizer):
        for state in opt.state.values():
            assert state["exp_avg"].dtype == torch.float32


def test_imitation_in_bf16_learns_as_float32_does():
    """60 NLL updates on a fixed set of chunks that depend on the observation: bf16 reaches
    the float32 run's likelihood (within 0.5 nats per chunk of 24 actions).

    At lr 2e-3 the two runs stay together (0.02-0.09 nats apart for four batch orders); at 5e-3
    training is chaotic, float32 alone ends between -14.6 and -23.1 nats with the batch order,
    and any rounding difference moves the end point by several nats."""
    data = _batch(256, 1)
    # Chunks that follow the observation, so there is something to learn beyond the marginal.
    data["chunk"] = torch.tanh(data["obs"]["object"][:, -1, :1, None].expand(-1, H, A) + 0.1 * data["chunk"])
    final = {}
    for precision in ("fp32", "bf16"):
        policy = _policy()
        learner = ImitationLearning(policy, ILConfig(steps=60, batch_size=32, lr=2e-3), precision)
        rng = np.random.default_rng(0)
        for _ in range(60):
            idx = torch.as_tensor(rng.choice(256, 32, replace=False))
            learner.update({"obs": {k: v[idx] for k, v in data["obs"].items()}, "prefix": data["prefix"][idx],
                            "chunk": data["chunk"][idx]})
        policy.eval()
        norm = policy.action_normalizer
        with torch.no_grad():
            final[precision] = -policy.log_prob(data["obs"], norm.normalize(data["prefix"]),
                                                norm.normalize(data["chunk"])).mean().item()
    start = _policy()
    with torch.no_grad():
        norm = start.action_normalizer
        initial = -start.log_prob(data["obs"], norm.normalize(data["prefix"]), norm.normalize(data["chunk"])).mean().item()
    assert final["fp32"] < initial - 20  # it did learn
    assert abs(final["bf16"] - final["fp32"]) < 0.5  # measured 0.02 (from 17.6 to -21.85 / -21.83)


def test_the_trainer_runs_every_stage_in_the_configured_precision(tmp_path):
    with pytest.raises(ValueError, match="TrainerConfig.precision"):
        TrainerConfig(precision="fp16")
    cfg = tiny_config()
    cfg.trainer.precision = "bf16"
    trainer = Trainer(cfg, tmp_path / "wiring", "full")
    for index, name in enumerate(SCHEDULES["full"]):
        learner = trainer._build_stage(name, index).learner
        assert learner.precision == "bf16", name
        if hasattr(learner, "close"):  # critic warm-up froze the actor
            learner.close()

    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config()
        cfg.trainer.precision = precision
        out = tmp_path / precision
        Trainer(cfg, out, "offline").run()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[precision] = {stage: [r for r in rows if r.get("stage") == stage] for stage in SCHEDULES["offline"]}
        policy = Policy.load(out / "policy_offline_rl")
        obs = {k: np.zeros((cfg.policy.obs_history, *v.shape), np.float32)
               for k, v in policy.config.observation_spec.items()}
        chunk, _ = policy.act(obs, np.zeros((cfg.policy.prefix_len, policy.config.action_dim), np.float32))
        assert chunk.dtype == np.float32 and np.isfinite(chunk).all()
    for stage, key in (("il", "il/nll"), ("critic_warmup", "critic/loss"), ("offline_rl", "actor/loss")):
        values = [r[key] for r in runs["bf16"][stage] if key in r]
        assert values and all(math.isfinite(v) for v in values), stage
    # Imitation's last loss differs (its first does not: the couplings start as the identity,
    # whose zero heads give the same density in any precision), so autocast took effect.
    last = {p: runs[p]["il"][-1]["il/nll"] for p in runs}
    assert last["bf16"] != last["fp32"]
    assert last["bf16"] == pytest.approx(last["fp32"], rel=0.05)
