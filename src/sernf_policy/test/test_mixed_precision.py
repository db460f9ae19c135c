"""bf16 mixed precision (sernf_policy.mixed_precision): bf16 matmuls, float32 densities."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sernf_policy import cpu_dropout
from sernf_policy.hl_gauss import HLGauss
from sernf_policy.mixed_precision import RMSNorm, autocast, check_precision, full_precision
from sernf_policy.policy import Policy


def test_only_the_known_precisions_are_accepted():
    assert check_precision("fp32") == "fp32" and check_precision("bf16") == "bf16"
    for bad in ("fp16", "float32", "BF16", None, 16):
        with pytest.raises(ValueError, match="fp32.*bf16"):
            check_precision(bad, "trainer.precision")
    with pytest.raises(ValueError):
        autocast("fp16", "cpu")


def test_bf16_runs_matmuls_in_bf16_and_fp32_changes_nothing():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with autocast("fp32", "cpu"):
        assert (x @ w).dtype == torch.float32
    with autocast("bf16", "cpu"):
        assert (x @ w).dtype == torch.bfloat16
    assert (x @ w).dtype == torch.float32  # the context ends


def test_full_precision_lifts_reduced_floats_only():
    for dtype in (torch.float32, torch.float64, torch.int64):
        t = torch.zeros(3, dtype=dtype)
        assert full_precision(t) is t
    assert full_precision(torch.zeros(3, dtype=torch.bfloat16)).dtype == torch.float32


def test_rms_norm_is_torchs_in_fp32_and_normalises_bf16_in_fp32():
    torch.manual_seed(0)
    ours, theirs = RMSNorm(16, eps=1e-6), nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
    ours.load_state_dict(theirs.state_dict())  # same parameters, same checkpoint keys
    x = torch.randn(5, 16)
    assert torch.equal(ours(x), theirs(x))
    with autocast("bf16", "cpu"):
        low = x.bfloat16()
        out = ours(low)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, theirs(low.float()))


def test_hl_gauss_loss_and_value_of_bf16_logits_are_float32():
    hl = HLGauss(0.0, 1.0, 51)
    logits = torch.randn(6, 51).bfloat16()
    targets = torch.rand(6)
    loss, value = hl.loss(logits, targets), hl.to_value(logits)
    assert loss.dtype == value.dtype == torch.float32
    torch.testing.assert_close(loss, hl.loss(logits.float(), targets))
    torch.testing.assert_close(value, hl.to_value(logits.float()))


def test_cpu_dropout_scales_bf16_values_once_with_the_exact_keep_rate():
    x = torch.randn(64, 128).bfloat16()
    out = cpu_dropout.dropout(x, 0.1, training=True)
    kept = out != 0
    assert 0.85 < kept.float().mean() < 0.95
    scale = 65536 / (65536 - round(0.1 * 65536))
    # One rounding of the exact product: a bf16 mask would have scaled by 1.109375 instead.
    assert torch.equal(out[kept], (x[kept].float() * scale).bfloat16())


def test_couplings_and_log_densities_stay_float32_under_bf16(tiny_config, perturb, batch):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.flow.base_components = 2  # the learned mixture base: its parameters enter the density too
    policy = Policy(cfg)
    perturb(policy.flow, std=0.3)
    obs, prefix = batch(8)
    obs = {k: torch.as_tensor(v) for k, v in obs.items()}
    prefix = torch.as_tensor(prefix)
    chunk = torch.rand(8, 3, 2) * 1.6 - 0.8
    ref = policy.log_prob(obs, prefix, chunk)
    context = policy.actor_context(obs, prefix)
    kvs = policy.flow._context_kv(context)
    x = torch.randn(8, 1, 3, 2)
    with autocast("bf16", "cpu"):
        low = policy.log_prob(obs, prefix, chunk)
        context16 = policy.actor_context(obs, prefix)
        y, logdet = policy.flow.layers[0](x, policy.flow._context_kv(context16)[0])
        samples, sample_log_prob = policy.flow.sample(context16, 4, 1.0)
    assert not torch.equal(low, ref)  # the matmuls did run in bf16
    # A coupling's log-determinant is summed in float32 (a bf16 sum keeps ~3 digits), and so
    # are the densities and the chunks.
    assert low.dtype == logdet.dtype == y.dtype == samples.dtype == sample_log_prob.dtype == torch.float32
    assert (low - ref).abs().max() < 0.25  # nats, for log-densities up to ~15 here (measured 0.05)
    y32, logdet32 = policy.flow.layers[0](x, kvs[0])
    torch.testing.assert_close(logdet, logdet32, atol=0.05, rtol=0.02)
    torch.testing.assert_close(y, y32, atol=0.05, rtol=0.02)
