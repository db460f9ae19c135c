"""bench/actor_loss_balance.py: the gradient norms of the RL actor objective's two terms (the
normalised Q term and lambda x NLL), on the CPU-sized learner of bench/learner_throughput.py."""

from __future__ import annotations

import pytest
import torch

from sernf_learner.offline_rl import ActorConfig, actor_loss_terms


@pytest.fixture()
def small_policy_and_batches(bench_script):
    learner, batches = bench_script("learner_throughput").make_learner("small", "cpu", batch=16)
    return learner.policy, batches


def test_terms_sum_to_the_actor_loss(small_policy_and_batches):
    from sernf_learner.offline_rl import _actor_loss

    policy, batches = small_policy_and_batches
    policy.flow.set_dropout(0.0)
    config = ActorConfig(bc_weight=0.3)
    torch.manual_seed(1)
    q_term, bc_term = actor_loss_terms(policy, batches[0], config)
    torch.manual_seed(1)  # the same reparameterised samples
    loss, q_mean, scale, bc_nll, _ = _actor_loss(policy, batches[0], config)
    assert (q_term + bc_term).item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-6)
    assert bc_term.item() == pytest.approx(0.3 * bc_nll.item(), rel=1e-6)
    assert q_term.item() == pytest.approx(-scale * q_mean.item(), rel=1e-6)


def test_norms_scale_with_lambda_and_the_balanced_lambda_balances(bench_script, small_policy_and_batches):
    bench = bench_script("actor_loss_balance")
    policy, batches = small_policy_and_batches
    policy.flow.set_dropout(0.2)
    policy.eval()

    def norms(weight: float) -> dict:
        torch.manual_seed(0)  # the same reparameterised samples for every lambda
        return bench.gradient_norms(policy, batches[:2], ActorConfig(bc_weight=weight))

    base = norms(0.1)
    assert base["batches"] == 2 and base["chunk_dims"] == policy.config.horizon * policy.config.action_dim
    assert base["q_term_grad_norm"] > 0 and base["bc_term_grad_norm"] > 0
    double = norms(0.2)
    # The Q term does not depend on lambda; the imitation term's gradient is linear in it.
    assert double["q_term_grad_norm"] == pytest.approx(base["q_term_grad_norm"], rel=1e-5)
    assert double["bc_term_grad_norm"] == pytest.approx(2 * base["bc_term_grad_norm"], rel=1e-5)
    assert double["mean_nll"] == pytest.approx(base["mean_nll"], rel=1e-5)
    balanced = norms(base["balanced_bc_weight"])
    assert balanced["bc_term_grad_norm"] == pytest.approx(balanced["q_term_grad_norm"], rel=1e-4)
    assert balanced["bc_over_q"] == pytest.approx(1.0, rel=1e-4)
    # Measured without dropout, and the policy is left as it was found.
    assert policy.flow.config.dropout == 0.2 and not policy.training


def test_no_batches_is_an_error(bench_script, small_policy_and_batches):
    bench = bench_script("actor_loss_balance")
    policy, _ = small_policy_and_batches
    with pytest.raises(ValueError, match="no batches"):
        bench.gradient_norms(policy, [], ActorConfig())


def test_command_line_on_an_exported_policy_and_a_store(bench_script, tmp_path, capsys):
    import json

    import numpy as np

    from sernf_data.store import EpisodeStore, ObsKeySpec, StoreSpec
    from sernf_policy.policy import Policy, PolicyConfig

    bench = bench_script("actor_loss_balance")
    torch.manual_seed(0)
    policy = Policy(PolicyConfig.create({"state": {"kind": "lowdim", "shape": [3]}}, 2, 1, 1, 3))
    policy.fit_normalizers(torch.rand(50, 2) * 2 - 1)
    policy.save(tmp_path / "policy")
    store = EpisodeStore(str(tmp_path / "replay"), mode="a",
                         spec=StoreSpec(obs={"state": ObsKeySpec((3,), "lowdim")}, action_dim=2, control_rate_hz=10.0))
    rng = np.random.default_rng(0)
    for i in range(4):
        n = 12
        store.append_episode({"state": rng.normal(size=(n, 3)).astype(np.float32),
                              "action": rng.uniform(-0.9, 0.9, size=(n, 2)).astype(np.float32),
                              "reward": np.eye(n, dtype=np.float32)[-1] * (i % 2), "timestamp": np.arange(n) / 10.0},
                             {"source": "demo", "success": bool(i % 2), "terminated": bool(i % 2)})
    out = tmp_path / "balance.json"
    assert bench.main(["--policy", str(tmp_path / "policy"), "--store", str(tmp_path / "replay"),
                       "--batches", "2", "--batch-size", "8", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["batches"] == 2 and figures["chunk_dims"] == 6 and figures["bc_weight"] == 0.1
    assert figures["q_term_grad_norm"] > 0 and figures["bc_term_grad_norm"] > 0
    assert f"{figures['balanced_bc_weight']:.3g}" in printed and "imitation / Q" in printed
    with pytest.raises(SystemExit):
        bench.main(["--policy", str(tmp_path / "policy"), "--store", str(tmp_path / "replay"), "--bc-weight", "0"])
