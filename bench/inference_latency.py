"""Inference latency of one action chunk: ``Policy.act_batch`` for a single observation.

Cube config (chunk timing of Fig. 7: A=17, H=6, P=2, T=4; low-dim hand joints 17 + cube pose 7),
paper-size flow (K=16 couplings, hidden 256, 8 heads, tokens 512) and critic (d_model 512 x 3
layers, M=2), best-of-N with N=24 (the online-RL N of G2). Prints p50 / p99 of the chunk time,
the FLOP per chunk (torch's FLOP counter) and the achieved fraction of the matmul rate measured
in the same run (``bench/matmul_rate.py``). The cube task runs at 20 Hz with P=2 queued actions,
so a chunk has 100 ms; the target on a 2-core CPU is p99 <= 50 ms.

``--reference`` times the reference implementation (``sernf_policy.fast_paths.reference_paths``)
interleaved with the optimised one, so both see the same machine load; ``--profile`` prints the
torch.profiler table of the optimised path. ``--compile`` also builds a copy of the policy
(sharing its weight tensors) with ``Policy.compile_for_acting`` (torch.compile of the flow's
sampling and the critics' scoring), prints the compile time (the first chunk) and times it
interleaved with the eager optimised path.
``--interop-threads 1`` sets ``torch.set_num_interop_threads(1)`` first. ``--bf16`` also times
chunks under ``torch.autocast("cpu", dtype=torch.bfloat16)`` interleaved with float32 (same
latents) and prints how far the chosen chunks move.
``--node-threads`` times chunks the way ``policy_node`` runs them, in a fresh process each: the
policy loaded from a checkpoint and dry-run on a checkpoint thread, chunks on an inference
thread, and a reload half-way; once with the node's checkpoint thread that ends after each load
(``sernf_policy.transient_worker``), once with a persistent one (``ThreadPoolExecutor(1)``, what
the node used before), whose OpenMP thread pool stays beside the inference thread's; with
``--compile`` also with the node's ``compile_for_acting`` (compiled and warmed up on the
checkpoint thread).

Run:  .venv/bin/python bench/inference_latency.py [--threads 2] [--chunks 200] [--reference] [--compile]
      [--profile] [--node-threads]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_policy",):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))
sys.path.insert(0, str(_ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matmul_rate import count_flops, matmul_rate  # noqa: E402

from sernf_policy.encoders import EncoderConfig  # noqa: E402
from sernf_policy.fast_paths import reference_paths  # noqa: E402
from sernf_policy.policy import Policy, PolicyConfig  # noqa: E402

A, H, P, T = 17, 6, 2, 4
CUBE_SPEC = {"hand_joints": {"kind": "lowdim", "shape": [17]}, "cube_pose": {"kind": "lowdim", "shape": [7]}}


def perturb_heads(policy: Policy, std: float = 0.02, seed: int = 1) -> None:
    """Non-zero s/b heads, so the flow is not the identity it starts as.

    Not larger: at 0.05 the 16 random couplings push every sample of this untrained flow onto
    the action clamp, and ``ChunkFlow.sample`` then recomputes each candidate's density at the
    clamped chunk (a forward pass, 8.6 instead of 3.3 GFLOP for the flow), which a trained
    policy almost never does. ``clamped_fraction`` is printed so this cannot hide again."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in policy.flow.layers:
            for head in (layer.conditioner.head_s, layer.conditioner.head_b):
                head[-1].weight.copy_(torch.randn(head[-1].weight.shape, generator=gen) * std)


def cube_policy(num_samples: int = 24, device: str = "cpu") -> Policy:
    cfg = PolicyConfig.create(CUBE_SPEC, A, T, P, H, encoder=EncoderConfig(token_dim=512), num_samples=num_samples)
    torch.manual_seed(0)
    policy = Policy(cfg)
    perturb_heads(policy)
    policy.fit_normalizers(np.random.default_rng(0).uniform(-1, 1, size=(1000, A)))
    return policy.to(device).eval()


def clamped_fraction(policy: Policy, obs: dict, prefix: np.ndarray, num_samples: int = 24) -> float:
    """Fraction of sampled candidates with an entry on the action clamp (they cost a second,
    forward pass of the flow for their density; see :func:`perturb_heads`)."""
    with torch.no_grad():
        checked = {k: torch.as_tensor(v, device=policy.device) for k, v in obs.items()}
        prefix_norm = policy.action_normalizer.normalize(torch.as_tensor(prefix, device=policy.device))
        chunks, _ = policy.sample(checked, prefix_norm, num_samples, policy.config.sigma_sample)
    bound = 1.0 - policy.flow.config.clamp_eps
    return float((chunks.abs() >= bound).flatten(2).any(dim=-1).float().mean())


def cube_observation(rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    obs = {k: rng.normal(size=(1, T, v["shape"][0])).astype(np.float32) for k, v in CUBE_SPEC.items()}
    return obs, rng.uniform(-0.5, 0.5, size=(1, P, A)).astype(np.float32)


def percentiles(times: list[float]) -> tuple[float, float]:
    arr = 1000.0 * np.asarray(times)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def timed_chunk(policy: Policy, obs: dict, prefix: np.ndarray, sync) -> float:
    t0 = time.perf_counter()
    policy.act_batch(obs, prefix)
    sync()
    return time.perf_counter() - t0


def run(policy: Policy, chunks: int, warmup: int, reference: bool, sync=lambda: None,
        compiled: Policy | None = None) -> dict[str, list[float]]:
    """Time ``chunks`` decisions (interleaved optimised / reference when ``reference`` / the
    ``compiled`` copy when given)."""
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"optimised": [], "reference": [], "compiled": []}
    for i in range(warmup + chunks):
        obs, prefix = cube_observation(rng)
        fast = timed_chunk(policy, obs, prefix, sync)
        if reference:
            with reference_paths():
                ref = timed_chunk(policy, obs, prefix, sync)
        if compiled is not None:
            comp = timed_chunk(compiled, obs, prefix, sync)
        if i >= warmup:
            times["optimised"].append(fast)
            if reference:
                times["reference"].append(ref)
            if compiled is not None:
                times["compiled"].append(comp)
    return times


def compare_bf16(policy: Policy, chunks: int = 12) -> str:
    """bf16 autocast vs float32 on the same observations and latents, interleaved."""
    rng = np.random.default_rng(4)
    times: dict[bool, list[float]] = {False: [], True: []}
    same, worst = 0, 0.0
    for i in range(chunks + 2):
        obs, prefix = cube_observation(rng)
        out = {}
        for bf16 in (False, True):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out[bf16] = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(i))
            if i >= 2:
                times[bf16].append(time.perf_counter() - t0)
        if i >= 2:
            same += int((out[False][1]["index"] == out[True][1]["index"]).all())
            worst = max(worst, float(np.abs(out[False][0] - out[True][0]).max()))
    p32, p16 = percentiles(times[False])[0], percentiles(times[True])[0]
    return (f"bf16 autocast: p50 {p16:.1f} ms vs float32 {p32:.1f} ms ({p32 / p16:.2f}x); same chosen candidate "
            f"in {same}/{chunks} chunks; max |chunk difference| {worst:.3g} (raw units)")


def _node_layout_times(checkpoint: str, loader_kind: str, chunks: int, warmup: int, threads: int,
                       compiled: bool = False) -> list[float]:
    """Chunk times [s] in policy_node's thread layout (runs in a fresh process; see the module
    docstring): nothing but the loader and the inference threads touch torch here. ``compiled``:
    the loader also compiles and warms up, as the node's ``compile_for_acting`` does."""
    import concurrent.futures

    from sernf_policy.transient_worker import TransientWorker

    if threads:
        torch.set_num_threads(threads)
    loader = TransientWorker("checkpoint") if loader_kind == "transient" else concurrent.futures.ThreadPoolExecutor(1)
    inference = concurrent.futures.ThreadPoolExecutor(1)

    def load() -> Policy:
        policy = Policy.load(checkpoint)
        policy.warm_up(batch_size=1, num_samples=1)  # the node's dry run
        if compiled:
            policy.compile_for_acting()
            for _ in range(2):  # the first call compiles, the second runs the compiled path
                policy.warm_up(batch_size=1, num_samples=policy.config.num_samples)
        return policy

    policy = loader.submit(load).result()
    rng = np.random.default_rng(0)
    times = []
    for i in range(warmup + chunks):
        if i == warmup + chunks // 2:
            policy = loader.submit(load).result()  # a hot reload; its own time is not counted
        obs, prefix = cube_observation(rng)
        t0 = time.perf_counter()
        inference.submit(policy.act_batch, obs, prefix).result()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    loader.shutdown()
    inference.shutdown()
    return times


def node_layout(policy: Policy, chunks: int, warmup: int, threads: int, rate: float, flops: float,
                compiled: bool = False) -> None:
    """Print p50 / p99 in policy_node's thread layout, with a transient and a persistent
    checkpoint thread (each in a fresh spawned process, the persistent one last); with
    ``compiled`` also the transient layout with ``compile_for_acting``."""
    import concurrent.futures
    import multiprocessing
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        policy.save(tmp)
        layouts = [("transient", False, "checkpoint thread ends after each load (policy_node)"),
                   ("transient", True, "the same, compile_for_acting"),
                   ("persistent", False, "persistent checkpoint thread (before)")]
        for kind, compile_it, what in layouts:
            if compile_it and not compiled:
                continue
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as proc:
                times = proc.submit(_node_layout_times, tmp, kind, chunks, warmup, threads, compile_it).result()
            p50, p99 = percentiles(times)
            print(f"node layout, {what}: p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                  f"({flops / (p50 / 1000) / rate * 100:5.1f} % of the matmul rate at p50)")


def profile(policy: Policy, chunks: int = 10, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    rng = np.random.default_rng(1)
    inputs = [cube_observation(rng) for _ in range(chunks)]
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for obs, prefix in inputs:
            policy.act_batch(obs, prefix)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=200, help="timed chunks")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=24, help="N candidates")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--reference", action="store_true", help="also time the reference path, interleaved")
    parser.add_argument("--profile", action="store_true", help="print the torch.profiler table")
    parser.add_argument("--compile", action="store_true", help="also time Policy.compile_for_acting, interleaved")
    parser.add_argument("--bf16", action="store_true", help="also compare bf16 autocast with float32")
    parser.add_argument("--interop-threads", type=int, default=0, help="torch inter-op threads (0: default)")
    parser.add_argument("--node-threads", action="store_true",
                        help="also time chunks in policy_node's thread layout (fresh processes)")
    args = parser.parse_args()
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = cube_policy(args.num_samples)
    rng = np.random.default_rng(2)
    obs, prefix = cube_observation(rng)
    # FLOP of the same computation under no_grad: torch's FLOP counter trips over parameters
    # inside inference_mode (act_batch's mode), which changes no arithmetic.
    def plain_act_batch(*args):
        with torch.no_grad():
            return Policy.act_batch.__wrapped__(policy, *args)

    flops = count_flops(plain_act_batch, obs, prefix)
    # The reference critic runs PyTorch's fused encoder-layer kernel in eval mode, which the FLOP
    # counter does not see; count that path with the fused kernel off (same arithmetic).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    with reference_paths():
        ref_flops = count_flops(plain_act_batch, obs, prefix)
    torch.backends.mha.set_fastpath_enabled(fastpath)
    rate = matmul_rate()
    print(f"act_batch, cube config A={A} H={H} P={P} T={T}, flow K=16/256, critic d512x3 M=2, N={args.num_samples}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s; FLOP per chunk: {flops / 1e9:.2f} G optimised, "
          f"{ref_flops / 1e9:.2f} G reference; clamped_fraction of candidates: {clamped_fraction(policy, obs, prefix):.2f}")
    compiled = None
    if args.compile:
        compiled = cube_policy(args.num_samples)
        # The same weight tensors as the eager policy: interleaving two policies with their own
        # 140 MB of weights each would make both stream their weights from memory more often
        # than one policy acting alone does.
        compiled.load_state_dict(policy.state_dict(), assign=True)
        compiled.compile_for_acting()
        t0 = time.perf_counter()
        compiled.act_batch(*cube_observation(np.random.default_rng(3)))
        print(f"compile_for_acting: first chunk (compiles) {time.perf_counter() - t0:.1f} s")
        same = compiled.act_batch(obs, prefix, generator=torch.Generator().manual_seed(5))
        eager = policy.act_batch(obs, prefix, generator=torch.Generator().manual_seed(5))
        print(f"compiled vs eager chunk: max |difference| {np.abs(same[0] - eager[0]).max():.2e}, "
              f"same candidate: {bool((same[1]['index'] == eager[1]['index']).all())}")
    times = run(policy, args.chunks, args.warmup, args.reference, compiled=compiled)
    for name, flop in (("optimised", flops), ("reference", ref_flops), ("compiled", flops)):
        if not times[name]:
            continue
        p50, p99 = percentiles(times[name])
        print(f"{name:9s} chunk: p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
              f"({flop / (p50 / 1000) / rate * 100:5.1f} % of the matmul rate at p50)")
    if times["reference"]:
        ratio = np.median(np.asarray(times["reference"]) / np.asarray(times["optimised"]))
        print(f"speed-up (median of per-chunk reference/optimised ratios): {ratio:.2f}x")
    if times["compiled"]:
        ratio = np.median(np.asarray(times["optimised"]) / np.asarray(times["compiled"]))
        print(f"compiled speed-up over the eager optimised path (median of per-chunk ratios): {ratio:.2f}x")
    if args.node_threads:
        node_layout(policy, args.chunks, args.warmup, args.threads, rate, flops, compiled=args.compile)
    if args.bf16:
        print(compare_bf16(policy))
    if args.profile:
        print(profile(policy))


if __name__ == "__main__":
    main()
