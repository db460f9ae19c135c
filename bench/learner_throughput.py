"""Learner throughput: Stage III (offline RL) updates per second (docs/design.md §7: measured, not asserted).

One update = critic TD step (â' sampled from the actor, target critics, HL-Gauss CE) + actor
step (reparameterised samples scored by min-Q, NLL of the data chunk) + Polyak step, i.e.
``OfflineRL.update`` exactly as training runs it, on batches already in memory (the replay
sampler's own rate is measured by ``bench/replay_throughput.py``; compare the two to see which
side limits training).

Configs (cube chunk timing, Fig. 7: A=17, H=6, P=2, T=4; low-dim observation hand joints 17 +
cube pose 7):

* ``paper``: paper-size actor (K=16 couplings, hidden 256, 8 heads, tokens 512) and critic
  (d_model 512, 3 layers, FF 256, M=2, 101 bins), batch 512 (G2, cube RL);
* ``small``: the CPU-sized model the point-task configs use (K=4, hidden 64, tokens 64,
  critic d_model 64 x 1 layer), batch 128.

Run:  .venv/bin/python bench/learner_throughput.py [--configs paper small] [--updates 5] [--threads N]
      [--reference | --bf16] [--profile] [--compile]
Prints one line per config: updates/s and ms per update (median of timed updates after warm-up),
the FLOP per update (torch's FLOP counter, forward + backward) and the achieved fraction of the
matmul rate measured in the same run (``bench/matmul_rate.py``). ``--reference`` also times the
reference model paths (``sernf_policy.fast_paths.reference_paths``; a learner built there, so
with the multi-tensor AdamW the code had before the fused one) interleaved with the optimised
ones; ``--bf16`` also times the update in mixed precision (``trainer.precision:
bf16``, ``sernf_policy.mixed_precision``) interleaved with the float32 one, and prints its FLOP
rate against both the float32 and the bfloat16 matmul rate; ``--profile`` prints the torch.profiler table of a few updates; ``--compile``
times ``torch.compile(OfflineRL.update)`` (the whole training step with its backward; graph
breaks at the ``.item()`` metrics) and prints the compile time (the warm-up updates).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_policy", "sernf_learner", "sernf_sim"):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))

sys.path.insert(0, str(_ROOT / "bench"))

import torch  # noqa: E402
from matmul_rate import count_flops, matmul_rate  # noqa: E402

from sernf_learner.offline_rl import ActorConfig, OfflineRL, OfflineRLConfig  # noqa: E402
from sernf_learner.td_targets import CriticConfig, TargetCritic  # noqa: E402
from sernf_policy.encoders import EncoderConfig  # noqa: E402
from sernf_policy.fast_paths import reference_paths  # noqa: E402
from sernf_policy.policy import Policy, PolicyConfig  # noqa: E402

A, H, P, T = 17, 6, 2, 4
SPEC = {"hand_joints": {"kind": "lowdim", "shape": [17]}, "cube_pose": {"kind": "lowdim", "shape": [7]}}
CONFIGS = {
    # name: (token_dim, flow kwargs, critic kwargs, batch)
    "paper": (512, {}, {}, 512),
    "small": (64, {"num_layers": 4, "hidden_dim": 64, "num_heads": 4},
              {"d_model": 64, "num_heads": 4, "num_layers": 1, "ff_dim": 128}, 128),
}


def make_batch(batch: int, gen: torch.Generator) -> dict:
    """A transition batch in the docs/architecture.md format (raw units, random values)."""

    def obs() -> dict:
        return {k: torch.randn(batch, T, v["shape"][0], generator=gen) for k, v in SPEC.items()}

    return {
        "obs": obs(), "next_obs": obs(),
        "prefix": torch.rand(batch, P, A, generator=gen) * 2 - 1,
        "chunk": torch.rand(batch, H, A, generator=gen) * 2 - 1,
        "chunk_mask": torch.ones(batch, H),
        "next_prefix": torch.rand(batch, P, A, generator=gen) * 2 - 1,
        "reward": (torch.rand(batch, generator=gen) < 0.05).float(),
        "discount": torch.full((batch,), 0.997**H),
        "done": (torch.rand(batch, generator=gen) < 0.02).float(),
        "is_offline": torch.ones(batch, dtype=torch.bool),
    }


def make_learner(name: str, device: str, batch: int | None = None,
                 precision: str = "fp32") -> tuple[OfflineRL, list[dict]]:
    token_dim, flow, critic, default_batch = CONFIGS[name]
    batch = batch or default_batch
    torch.manual_seed(0)
    cfg = PolicyConfig.create(SPEC, A, T, P, H, encoder=EncoderConfig(token_dim=token_dim), flow=flow, critic=critic)
    policy = Policy(cfg).to(device)
    policy.fit_normalizers(torch.rand(1000, A) * 2 - 1)
    learner = OfflineRL(policy, TargetCritic(policy), OfflineRLConfig(
        steps=1, batch_size=batch, critic=CriticConfig(), actor=ActorConfig()), precision)
    gen = torch.Generator().manual_seed(0)
    batches = [make_batch(batch, gen) for _ in range(4)]
    if device != "cpu":
        batches = [{k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
                    for k, v in b.items()} for b in batches]
    return learner, batches


def bench(name: str, updates: int, warmup: int, device: str, reference: bool = False,
          batch: int | None = None, compile_update: bool = False, bf16: bool = False) -> dict:
    """Median seconds per update (optimised, and reference or bf16 when asked, interleaved), FLOP;
    with ``compile_update`` the optimised update is ``torch.compile``d and ``compile_s`` is the
    time of the warm-up updates (compilation included). ``bf16``: a second learner, built the
    same way, updates under ``precision="bf16"`` (key ``bf16``)."""
    problem = mode_conflict(reference, compile_update, bf16, warmup)
    if problem:
        raise ValueError(problem)
    learner, batches = make_learner(name, device, batch)
    learner16 = make_learner(name, device, batch, precision="bf16")[0] if bf16 else None
    # The reference learner is built on the reference paths too: its optimisers are the
    # multi-tensor AdamW the code had before the fused one (sernf_learner.distributed.make_adamw).
    if reference:
        with reference_paths():
            reference_learner = make_learner(name, device, batch)[0]
    eager_update = learner.update  # FLOP are counted on it: the counter does not see compiled code
    if compile_update:
        learner.update = torch.compile(learner.update)

    def one(i: int, which: OfflineRL | None = None) -> float:
        t0 = time.perf_counter()
        (which or learner).update(batches[i % len(batches)])
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"optimised": [], "reference": [], "bf16": []}
    warm_start = time.perf_counter()
    for i in range(warmup + updates):
        if i == warmup:
            compile_s = time.perf_counter() - warm_start
        fast = one(i)
        if reference:
            with reference_paths():
                ref = one(i, reference_learner)
        if learner16 is not None:
            half = one(i, learner16)
        if i >= warmup:
            times["optimised"].append(fast)
            if reference:
                times["reference"].append(ref)
            if learner16 is not None:
                times["bf16"].append(half)
    flops = count_flops(eager_update, batches[0])
    with reference_paths():
        ref_flops = count_flops(eager_update, batches[0])
    return {"batch": len(batches[0]["reward"]), "flops": flops, "ref_flops": ref_flops,
            **({"compile_s": compile_s} if compile_update else {}),
            **{k: statistics.median(v) for k, v in times.items() if v}}


def mode_conflict(reference: bool, compile_update: bool, bf16: bool, warmup: int) -> str | None:
    """Why these timing modes cannot be combined, or None."""
    if compile_update and reference:
        return "--compile and --reference cannot be combined (the reference path would recompile)"
    if bf16 and (reference or compile_update):
        return "--bf16 times the optimised float32 update against the bf16 one; not with --reference or --compile"
    if compile_update and warmup < 1:
        return "--compile needs --warmup >= 1 (the first update compiles)"
    return None


def profile(name: str, device: str, updates: int = 3, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    learner, batches = make_learner(name, device)
    learner.update(batches[0])  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(updates):
            learner.update(batches[i % len(batches)])
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["small", "paper"], choices=sorted(CONFIGS))
    parser.add_argument("--updates", type=int, default=5, help="timed updates per config")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference", action="store_true", help="also time the reference paths, interleaved")
    parser.add_argument("--profile", action="store_true", help="print the torch.profiler table per config")
    parser.add_argument("--compile", action="store_true", help="torch.compile the optimised update (not with --reference)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time the update in bf16 mixed precision (trainer.precision: bf16), interleaved")
    args = parser.parse_args()
    problem = mode_conflict(args.reference, args.compile, args.bf16, args.warmup)
    if problem:
        parser.error(problem)
    if args.threads:
        torch.set_num_threads(args.threads)
    rate = matmul_rate(device=args.device)
    print(f"offline_rl updates on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"cube timing A={A} H={H} P={P} T={T}; matmul rate {rate / 1e9:.1f} GFLOP/s")
    if args.bf16:
        rate16 = matmul_rate(device=args.device, dtype=torch.bfloat16)
        print(f"bfloat16 matmul rate {rate16 / 1e9:.1f} GFLOP/s (same threads)")
    for name in args.configs:
        r = bench(name, args.updates, args.warmup, args.device, args.reference, compile_update=args.compile,
                  bf16=args.bf16)
        if "compile_s" in r:
            print(f"{name:6s} torch.compile of the update: {r['compile_s']:.1f} s for the {args.warmup} warm-up "
                  "update(s), compilation included; the optimised line below is the compiled update")
        for path, flops in (("optimised", r["flops"]), ("reference", r["ref_flops"])):
            if path not in r:
                continue
            sec = r[path]
            print(f"{name:6s} batch {r['batch']:4d} {path:9s}: {1 / sec:8.2f} updates/s  ({1000 * sec:8.1f} ms/update, "
                  f"{r['batch'] / sec:8.0f} transitions/s, {flops / 1e9:7.1f} GFLOP/update = "
                  f"{flops / sec / rate * 100:5.1f} % of the matmul rate)")
        if "bf16" in r:
            sec = r["bf16"]
            print(f"{name:6s} batch {r['batch']:4d} bf16     : {1 / sec:8.2f} updates/s  ({1000 * sec:8.1f} ms/update, "
                  f"{r['batch'] / sec:8.0f} transitions/s, {r['flops'] / 1e9:7.1f} GFLOP/update = "
                  f"{r['flops'] / sec / rate * 100:5.1f} % of the float32 matmul rate, "
                  f"{r['flops'] / sec / rate16 * 100:5.1f} % of the bfloat16 one)")
            print(f"{name:6s} bf16 speed-up {r['optimised'] / sec:.2f}x over float32 (interleaved)")
        if "reference" in r:
            print(f"{name:6s} speed-up {r['reference'] / r['optimised']:.2f}x "
                  f"(reference-path FLOP at optimised speed: {r['ref_flops'] / r['optimised'] / rate * 100:5.1f} % "
                  "of the matmul rate)")
        if args.profile:
            print(profile(name, args.device))


if __name__ == "__main__":
    main()
