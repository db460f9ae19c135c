"""CUDA-graph acting (:mod:`sernf_policy.cuda_graph_acting`) gives act_batch's eager outputs.

The graph tests need a CUDA device and are skipped without one (CI has none; they were run
on a lent H200, see docs/performance.md). The noise split they rely on is tested everywhere.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch

from sernf_policy.cuda_graph_acting import act_without_sync
from sernf_policy.encoders import EncoderConfig
from sernf_policy.policy import Policy, PolicyConfig, _to_host

SPEC = {"hand": {"kind": "lowdim", "shape": [5]}, "cam": {"kind": "rgb", "shape": [32, 32, 3]}}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _perturb_heads(policy: Policy, std: float) -> None:
    """Random s/b heads (they start at zero: the identity flow); a large ``std`` puts
    candidates on the action clamp."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in policy.flow.layers:
            for head in (layer.conditioner.head_s, layer.conditioner.head_b):
                head[-1].weight.copy_(torch.randn(head[-1].weight.shape, generator=gen) * std)
                head[-1].bias.copy_(torch.randn(head[-1].bias.shape, generator=gen) * std)


def _policy(std: float, device: str = "cpu", selection_max_disagreement: float = 0.0) -> Policy:
    torch.manual_seed(0)
    cfg = PolicyConfig.create(
        SPEC, action_dim=4, obs_history=2, prefix_len=2, horizon=6,
        encoder=EncoderConfig(token_dim=32), flow={"num_layers": 4, "hidden_dim": 32, "num_heads": 4},
        critic={"d_model": 32, "num_heads": 4, "num_layers": 2, "ff_dim": 24}, num_samples=16,
        selection_max_disagreement=selection_max_disagreement,
    )
    policy = Policy(cfg)
    _perturb_heads(policy, std)
    policy.fit_normalizers(np.random.default_rng(0).uniform(-2, 2, size=(200, 4)),
                           {"hand": np.random.default_rng(1).normal(size=(200, 5))})
    return policy.to(device)


def _inputs(batch: int, seed: int):
    rng = np.random.default_rng(seed)
    obs = {"hand": rng.normal(size=(batch, 2, 5)).astype(np.float32),
           "cam": rng.integers(0, 256, size=(batch, 2, 32, 32, 3), dtype=np.uint8)}
    return obs, rng.uniform(-1.5, 1.5, size=(batch, 2, 4)).astype(np.float32)


def _act(policy: Policy, obs, prefix, seed: int, **kwargs):
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    return policy.act_batch(obs, prefix, generator=gen, **kwargs)


def _assert_same(a, b) -> None:
    np.testing.assert_array_equal(a[1]["index"], b[1]["index"])
    np.testing.assert_array_equal(a[1]["fallback"], b[1]["fallback"])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[1]["log_prob"], b[1]["log_prob"], rtol=1e-5, atol=1e-4)
    if b[1]["q"] is None:
        assert a[1]["q"] is None
    else:
        np.testing.assert_allclose(a[1]["q"], b[1]["q"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("std", [0.1, 2.0])  # 2.0: candidates on the action clamp
def test_sampling_is_drawing_then_transforming_noise(std):
    policy = _policy(std).eval()
    obs, prefix = _inputs(3, 0)
    prefix_norm = policy.action_normalizer.normalize(torch.as_tensor(prefix))
    with torch.no_grad():
        context = policy.actor_context(obs, prefix_norm)
        drawn = policy.flow.sample(context, 16, 0.7, generator=torch.Generator().manual_seed(5))
        noise = policy.flow.draw_noise(context, 16, generator=torch.Generator().manual_seed(5))
        actions, log_prob, clamped = policy.flow.transform_noise(context, noise, 0.7)
    assert bool(clamped.any()) == (std == 2.0)
    torch.testing.assert_close(actions, drawn[0], rtol=0, atol=0)
    # sample() recomputes only the clamped candidates' density
    torch.testing.assert_close(log_prob[~clamped], drawn[1][~clamped], rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise must have shape"):
        policy.flow.transform_noise(context, noise[:, :, :2], 0.7)


@pytest.mark.parametrize(("std", "selection"), [(0.1, "best_of_n"), (2.0, "most_likely"), (2.0, "best_of_n")])
def test_the_captured_computation_is_act_batch(std, selection):
    """What the graph records, run eagerly on the CPU: the same choice as act_batch from the
    same noise, including the density of clamped candidates (std 2.0 clamps some)."""
    policy = _policy(std, selection_max_disagreement=0.05).eval()
    obs, prefix = _inputs(3, 4)
    eager = _act(policy, obs, prefix, 6, selection=selection)
    noise = torch.randn((3, 16, 6, 4), generator=torch.Generator().manual_seed(6))  # act_batch's draw
    with torch.inference_mode():
        *chosen, clamped = act_without_sync(policy, {k: torch.as_tensor(v) for k, v in obs.items()},
                                            torch.as_tensor(prefix), noise, 0.7, selection)
    assert (int(clamped) > 0) == (std == 2.0)
    _assert_same(_to_host(*chosen), eager)


def test_capture_needs_cuda_and_the_flow_actor():
    with pytest.raises(ValueError, match="CUDA device"):
        _policy(0.1).capture_cuda_graph()


@needs_cuda
@pytest.mark.parametrize("selection", ["best_of_n", "most_likely", "single"])
def test_graph_replays_give_the_eager_outputs(selection):
    policy = _policy(0.1, "cuda", selection_max_disagreement=0.05)
    policy.capture_cuda_graph(batch_size=2, selection=selection)
    for seed in range(4):
        obs, prefix = _inputs(2, seed)
        graph = _act(policy, obs, prefix, seed, selection=selection)
        policy._acting_graph, captured = None, policy._acting_graph
        eager = _act(policy, obs, prefix, seed, selection=selection)
        policy._acting_graph = captured
        _assert_same(graph, eager)
        assert captured.replays == seed + 1  # the graph really ran
    policy.config.selection_top_k = 3  # a setting the captured selection was built without
    _act(policy, obs, prefix, 0, selection=selection)
    assert captured.replays == 4


@needs_cuda
def test_clamped_candidates_get_the_density_of_the_clamped_chunk():
    policy = _policy(2.0, "cuda")
    policy.capture_cuda_graph(batch_size=1, selection="most_likely")  # the choice rests on log_prob
    obs, prefix = _inputs(1, 3)
    graph = _act(policy, obs, prefix, 9, selection="most_likely")
    assert (policy._acting_graph.replays, policy._acting_graph.clamped_replays) == (1, 1)
    policy.release_cuda_graph()
    _assert_same(graph, _act(policy, obs, prefix, 9, selection="most_likely"))


@needs_cuda
def test_new_weights_in_place_are_used_and_replaced_tensors_fall_back(caplog):
    policy = _policy(0.1, "cuda")
    policy.capture_cuda_graph(batch_size=1)
    obs, prefix = _inputs(1, 1)
    before = _act(policy, obs, prefix, 2)
    other = _policy(0.5, "cuda")
    policy.load_state_dict(other.state_dict())  # copies into the captured tensors
    after = _act(policy, obs, prefix, 2)
    assert not np.allclose(before[0], after[0])
    policy._acting_graph, captured = None, policy._acting_graph
    _assert_same(after, _act(policy, obs, prefix, 2))
    policy._acting_graph = captured
    policy.load_state_dict(_policy(0.3, "cuda").state_dict(), assign=True)  # new tensors
    with caplog.at_level(logging.WARNING):
        stale = _act(policy, obs, prefix, 2)
    assert "acting eagerly" in caplog.text
    policy._acting_graph = None
    _assert_same(stale, _act(policy, obs, prefix, 2))


@needs_cuda
def test_capture_while_another_policy_acts_on_the_device():
    """The policy node captures a new checkpoint's graph while the running policy acts."""
    running, new = _policy(0.1, "cuda"), _policy(0.3, "cuda")
    obs, prefix = _inputs(1, 0)
    errors: list[BaseException] = []
    stop = threading.Event()
    chunks = []

    def act_loop() -> None:
        try:
            while not stop.is_set():
                chunks.append(_act(running, obs, prefix, 1)[0])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=act_loop)
    worker.start()
    try:
        new.capture_cuda_graph(batch_size=1)
    finally:
        stop.set()
        worker.join()
    assert not errors and len(chunks) >= 1
    assert all(np.array_equal(c, chunks[0]) for c in chunks)  # the running policy was undisturbed
    graph = _act(new, obs, prefix, 4)
    new.release_cuda_graph()
    _assert_same(graph, _act(new, obs, prefix, 4))
