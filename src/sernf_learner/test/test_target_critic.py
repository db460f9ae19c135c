"""TargetCritic follows the online critic's BatchNorm statistics, not only its parameters
(a ResNet encoder trained end to end normalises with running statistics)."""

from __future__ import annotations

import torch

from sernf_learner.td_targets import TargetCritic
from sernf_policy.encoders import EncoderConfig, ResNetEncoderConfig
from sernf_policy.policy import Policy, PolicyConfig


def _image_policy(finetune: str = "full") -> Policy:
    torch.manual_seed(0)
    spec = {"cam": {"kind": "rgb", "shape": [32, 32, 3]}, "joints": {"kind": "lowdim", "shape": [3]}}
    cfg = PolicyConfig.create(
        spec, 2, 1, 1, 2,
        encoder=EncoderConfig(token_dim=16, image_backbone="resnet18", resnet=ResNetEncoderConfig(finetune=finetune)),
        flow={"num_layers": 2, "hidden_dim": 16, "num_heads": 2},
        critic={"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 16},
        num_samples=2,
    )
    return Policy(cfg)


def _running_means(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_target_buffers_follow_the_online_critic_and_survive_a_checkpoint():
    policy = _image_policy()
    target = TargetCritic(policy)
    before = _running_means(target.encoder)
    assert before, "the resnet18 critic encoder has BatchNorm layers"
    # A training-mode forward pass moves the online critic's running statistics.
    policy.critic_encoder.train()
    obs = {"cam": torch.randint(0, 255, (8, 1, 32, 32, 3), dtype=torch.uint8),
           "joints": torch.randn(8, 1, 3)}
    with torch.no_grad():
        policy.critic_encoder(policy.normalize_obs(obs))
    online = _running_means(policy.critic_encoder)
    assert not torch.allclose(online[0], before[0])

    target.update(policy, tau=0.5)
    halfway = _running_means(target.encoder)
    for t, b, o in zip(halfway, before, online, strict=True):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * o)
    counters = [m.num_batches_tracked for m in target.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(int(c) == 1 for c in counters)  # integer buffers are copied, not averaged

    saved = {k: v.clone() for k, v in target.tensors().items()}
    assert any(k.startswith("buffer:") for k in saved)
    fresh = TargetCritic(policy)
    fresh.load_tensors(saved)
    for a, b in zip(_running_means(fresh.encoder), halfway, strict=True):
        torch.testing.assert_close(a, b)


def test_checkpoints_without_buffers_still_load():
    policy = _image_policy()
    target = TargetCritic(policy)
    params_only = {k: v.clone() for k, v in target.tensors().items() if not k.startswith("buffer:")}
    TargetCritic(policy).load_tensors(params_only)


def test_a_frozen_backbones_statistics_are_shared_not_averaged():
    policy = _image_policy(finetune="frozen")
    target = TargetCritic(policy)
    online_bn = [m for m in policy.critic_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    target_bn = [m for m in target.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert online_bn and all(t.running_mean is o.running_mean for t, o in zip(target_bn, online_bn, strict=True))
    before = online_bn[0].running_mean.clone()
    for _ in range(3):
        target.update(policy, tau=0.3)
    assert torch.equal(target_bn[0].running_mean, before)  # no rounding drift
    assert not any(k.startswith("buffer:encoder.") and "bn" in k for k in target.tensors())
    TargetCritic(policy).load_tensors(target.tensors())
