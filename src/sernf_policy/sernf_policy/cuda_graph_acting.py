"""One :meth:`Policy.act_batch` call captured as a CUDA graph.

Why: on a GPU one chunk of the cube config is over a thousand small kernels (flow couplings, critic
layers, selection) that together run ~5 ms on the device, but launching them one by one from
Python takes ~30 ms of host time (``bench/gpu.py --profile`` on an H200). A CUDA graph records
the launches once and replays them with one call, so the host cost no longer scales with the
number of kernels. The paper's own latency figures (§V, < 100 ms on an RTX 4090) are for eager
PyTorch; this is our addition for real-time acting.

What is captured is exactly the eager fast path of ``act_batch`` after input validation:
normalise the prefix, encode the observation, push ``sigma * eps`` through the flow, score
the candidates with the critics and choose (:meth:`Policy._choose`). One thing stays outside
the graph, the noise draw (``torch.randn`` with the caller's generator, copied into the
graph's input), so the outputs equal the eager path's for the same generator.

One step differs in how, not in what: the density fix for candidates on the action clamp
(:meth:`ChunkFlow.sample` recomputes ``log_prob`` at the clamped chunk, only for the clamped
candidates, which needs a host sync and data-dependent shapes a graph cannot hold). The graph
recomputes it for every candidate and keeps it where a candidate was clamped. That costs a
forward pass of the flow on the device, but keeps the latency independent of the data (an
eager redo whenever some candidate was clamped tripled the p99 on the bench's untrained flow),
and the result agrees with the eager path within float rounding.

A graph reads its inputs, parameters and buffers at fixed addresses. In-place parameter
updates (optimiser steps, ``load_state_dict`` into the same tensors) are therefore picked up;
anything that swaps a tensor (``.to()``, ``load_state_dict(assign=True)``, a partition change
that rebuilds a coupling plan) is detected by a fingerprint of those addresses before each
replay, and the call then runs eagerly with a warning until :meth:`Policy.capture_cuda_graph`
is called again.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .policy import Policy

_LOG = logging.getLogger(__name__)

#: Eager runs before capture: the first builds the flow's coupling plans and cuBLAS handles,
#: which must not happen inside the capture.
WARMUP_RUNS = 3


def act_without_sync(policy: Policy, obs: Mapping[str, Tensor], prefix: Tensor, noise: Tensor, sigma: float,
                     selection: str) -> tuple[Tensor, ...]:
    """What the graph holds: ``act_batch`` from device tensors (``obs`` as validated, raw
    ``prefix [B, P, A]``, standard-normal ``noise [B, N, H, A]``) to ``Policy._choose``'s
    tensors and the number of clamped candidates, with no host synchronisation. Runs on any
    device (the CPU tests compare it with ``act_batch``)."""
    prefix_norm = policy.action_normalizer.normalize(prefix)
    context = policy.actor_context(obs, prefix_norm)
    flow = policy.flow
    chunks, log_prob, clamped = flow.transform_noise(context, noise, sigma)
    log_prob = torch.where(clamped, flow.clamped_log_prob(chunks, context), log_prob)  # all N at once
    return (*policy._choose(obs, prefix_norm, chunks, log_prob, selection), clamped.sum())


class ActingGraph:
    """``act_batch`` for one (batch size, N, sigma, selection), recorded as a CUDA graph."""

    def __init__(self, policy: Policy, batch_size: int, num_samples: int, sigma: float, selection: str) -> None:
        cfg = policy.config
        device = policy.device
        if cfg.actor == "flow" and cfg.flow.base_components:  # the component draw is no graph input
            raise ValueError("CUDA-graph acting supports the N(0, I) base (flow base_components 0), this policy "
                             f"has base_components {cfg.flow.base_components}")
        if cfg.actor == "flow" and cfg.flow.components > 1:  # nor is the choice among the flows
            raise ValueError("CUDA-graph acting supports one flow (flow components 1), this policy is a mixture "
                             f"of {cfg.flow.components}")
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the policy on a CUDA device, it is on {device}")
        if cfg.actor != "flow":
            raise ValueError(f"CUDA-graph acting supports the flow actor, this policy has actor={cfg.actor!r}")
        if selection not in ("best_of_n", "most_likely", "single"):
            raise ValueError(f"selection must be best_of_n/most_likely/single, got {selection!r}")
        if int(batch_size) != batch_size or batch_size < 1 or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"batch_size and num_samples must be positive ints, got {batch_size}, {num_samples}")
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.policy = policy
        self.batch_size = int(batch_size)
        self.num_samples = 1 if selection == "single" else int(num_samples)
        self.sigma = float(sigma)
        self.selection = selection
        # Settings the captured selection branches on (Python-level: baked into the graph).
        self._guards = (cfg.selection_top_k, cfg.selection_max_disagreement)
        # Static inputs, at the dtypes act_batch's validation produces (uint8 images, float32).
        self.obs: dict[str, Tensor] = {
            key: torch.zeros((self.batch_size, cfg.obs_history, *spec.shape), device=device,
                             dtype=torch.uint8 if spec.kind == "rgb" else torch.float32)
            for key, spec in cfg.observation_spec.items()
        }
        self.prefix = torch.zeros((self.batch_size, cfg.prefix_len, cfg.action_dim), device=device)
        was_training = policy.training
        policy.eval()
        try:
            with torch.inference_mode():
                context = policy.actor_context(self.obs, policy.action_normalizer.normalize(self.prefix))
            # The eager sampler draws its noise at the context's dtype (ChunkFlow.draw_noise).
            self.noise = torch.zeros((self.batch_size, self.num_samples, cfg.horizon, cfg.action_dim),
                                     device=device, dtype=context.dtype)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.inference_mode(), torch.cuda.stream(stream):
                for _ in range(WARMUP_RUNS):
                    self._forward()
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the policy node captures in its checkpoint thread while the running
            # policy keeps acting on the same device from another thread.
            with torch.inference_mode(), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = self._forward()
        finally:
            policy.train(was_training)
        # The coupling plans' index tensors are read by the graph: keep them alive here even if
        # the flow drops its cache, and include them in the fingerprint.
        self._plans = [layer._plan for layer in policy.flow.layers]
        self._fingerprint = self._current_fingerprint()
        self._warned = False
        #: Replays so far, and how many of them had a candidate on the action clamp.
        self.replays = 0
        self.clamped_replays = 0

    def __deepcopy__(self, memo: dict) -> None:
        return None  # a copied policy acts eagerly until it captures its own graph

    def _forward(self) -> tuple[Tensor, ...]:
        return act_without_sync(self.policy, self.obs, self.prefix, self.noise, self.sigma, self.selection)

    def _current_fingerprint(self) -> tuple:
        policy = self.policy
        tensors = itertools.chain(policy.parameters(), policy.buffers())
        return (tuple(t.data_ptr() for t in tensors), tuple(id(layer._plan) for layer in policy.flow.layers))

    def serves(self, checked: Mapping[str, Any], num_samples: int, sigma: float, selection: str) -> bool:
        """Whether this graph computes act_batch for these (validated) inputs and settings."""
        n = 1 if selection == "single" else num_samples
        cfg = self.policy.config
        if (selection != self.selection or n != self.num_samples or sigma != self.sigma
                or (cfg.selection_top_k, cfg.selection_max_disagreement) != self._guards
                or set(checked) != set(self.obs)
                or any(np.shape(v)[0] != self.batch_size for v in checked.values())):
            return False
        if self._current_fingerprint() != self._fingerprint:
            if not self._warned:
                _LOG.warning("policy tensors were replaced since the CUDA graph was captured (.to(), "
                             "load_state_dict(assign=True), a new partition): acting eagerly until "
                             "capture_cuda_graph() is called again")
                self._warned = True
            return False
        return True

    def act(self, checked: Mapping[str, Any], prefix: np.ndarray,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """Replay for validated inputs: ``Policy._choose``'s tensors (the graph's own outputs:
        copy them before the next replay)."""
        for key, buf in self.obs.items():
            buf.copy_(torch.as_tensor(checked[key]))
        self.prefix.copy_(torch.as_tensor(prefix))
        # The same draw as ChunkFlow.draw_noise makes in the eager path.
        noise = torch.randn(self.noise.shape, generator=generator, device=self.noise.device, dtype=self.noise.dtype)
        self.noise.copy_(noise)
        self.graph.replay()
        *chosen, clamped = self.outputs
        self.replays += 1
        self.clamped_replays += int(clamped.item() > 0)
        return tuple(chosen)
