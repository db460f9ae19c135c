"""Data-parallel training over several processes (``torchrun`` / ``sernf-train --nproc N``).

Every process (rank) holds a full replica of the policy, target critics and optimisers, samples
its own shard of each batch (``batch_size / world_size`` transitions, its own sampler seed, from
the same zarr stores) and computes gradients on it; before every optimiser step the gradients
are averaged over the ranks (one coalesced all-reduce per step, NCCL on GPUs, gloo on CPUs),
so every replica takes the same step as one process would on the combined batch: the mean loss
over B transitions equals the mean over ranks of the per-shard means when shards are equal.

Why not ``torch.nn.parallel.DistributedDataParallel`` itself: DDP averages gradients through
hooks armed by the *wrapped module's* ``forward``; a SERNF update calls several parts of the
policy (actor context, flow sampling, critic scoring, target critics) with two optimisers over
disjoint parameter sets, and freezes the critic inside the actor loss, none of which goes
through one ``forward``. The explicit all-reduce here is DDP's arithmetic (sum, divide by the
world size, same result on every rank) without that constraint. Batch statistics that scale a
loss (the TD3+BC ``mean|Q|`` of the actor step) are averaged the same way.

Rank 0 alone writes checkpoints, exported policies and metrics and runs evaluations; the other
ranks wait at a barrier. ``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` /
``MASTER_ADDR`` / ``MASTER_PORT``; :func:`init_from_env` reads them.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.graph import increment_version

from sernf_policy.fast_paths import fast_paths_enabled

__all__ = [
    "DistributedContext",
    "all_gather_objects",
    "barrier",
    "broadcast_module",
    "init_from_env",
    "is_main_process",
    "make_adamw",
    "mean_over_ranks",
    "rank",
    "shard_batch_size",
    "shutdown",
    "sync_gradients",
    "world_size",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the job (1 when not distributed)."""
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if _active() else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the rank that writes files."""
    return rank() == 0


def init_from_env(device: str = "cpu", timeout_s: float = 1800.0) -> DistributedContext | None:
    """Join the job described by torchrun's environment variables; None when ``WORLD_SIZE``
    is unset or 1 (plain single-process run). NCCL for CUDA devices, gloo otherwise; on CUDA,
    each rank uses the GPU of its ``LOCAL_RANK``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"WORLD_SIZE={size} but {name} is not set: start the job with torchrun "
                             "or sernf-train --nproc")
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank with LOCAL_RANK={local_rank} needs a CUDA device, "
                             f"found {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def shutdown() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_batch_size(batch_size: int, what: str = "batch_size") -> int:
    """Transitions per rank: ``batch_size / world_size``, which must divide evenly (equal
    shards make the average of the per-rank mean losses the combined batch's mean loss)."""
    n = world_size()
    if batch_size % n:
        raise ValueError(f"{what}={batch_size} must be divisible by the number of processes ({n})")
    return batch_size // n


def sync_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over all ranks in place (one coalesced all-reduce; no-op alone).

    Every rank runs the same update code, so the set of parameters with a gradient is the same
    everywhere; a missing gradient is treated as zero to keep the buffers aligned regardless.
    """
    if not _active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    offset = 0
    for p, g in zip(params, grads, strict=True):
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        p.grad = g
        offset += g.numel()


def make_adamw(params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The AdamW of every training stage (G2: betas (0.9, 0.999), eps 1e-8).

    ``fused=True``: torch's fused kernel updates every parameter tensor in one call. Its
    multi-tensor (``foreach``) path reads each parameter's step count back to the host
    (``.item()``, ~300 a step for the CPU-sized learner's two optimisers) and runs a dozen
    list ops; fused is 3x (small model, 144 tensors) to 5x (paper size, 468 tensors) faster
    per step on CPU, with the same arithmetic to float rounding (docs/performance.md). Built
    inside ``sernf_policy.fast_paths.reference_paths()`` it is the multi-tensor one, so the
    benchmarks' reference learner keeps the optimiser it had before."""
    fused = fast_paths_enabled()
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8,
                             fused=fused, foreach=not fused)


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip_norm: float = 0.0) -> float:
    """The optimiser step of every training stage: gradients of ``loss`` (outside any autocast
    context), averaged over the ranks, clipped to ``grad_clip_norm`` (0: not clipped), then the
    step. Returns the gradient's global norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sync_gradients(params)  # data-parallel runs: the combined batch's gradient
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip_norm or math.inf))
    optimizer.step()
    # The fused AdamW kernel (make_adamw) writes the parameters without moving their version
    # counters (torch 2.14, CPU), and acting caches values derived from the weights by those
    # counters (sernf_policy.acting_cache): without this, rollouts after an update would act
    # with the weights of before it.
    increment_version(params)
    return grad_norm


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over all ranks; the value itself when alone."""
    if not _active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (identical replicas at start)."""
    if not _active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():  # integer / bool buffers (partitions) are built, not learnt
            dist.broadcast(tensor.data, src=src)


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if _active():
        dist.barrier()


def all_gather_objects(obj: Any) -> Sequence[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` alone."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
