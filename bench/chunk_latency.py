"""Chunk latency on this CPU: the scissors config beside the cube config and the matmul rate.

One action chunk is ``Policy.act_batch`` for a single observation (host input to host chunk,
best-of-N with the critic), float32, random weights (``pretrained=False`` costs the same as the
DINOv2 weights):

* scissors (paper appendix E1 / G1): three 224 x 224 views through one DINOv2 ViT-L/14 reg4
  backbone per encoder (the actor's and the critic's: six ViT-L forwards per chunk), hand
  joints 17 + end-effector pose 7, A=24, H=10, P=3, T=1, paper-size flow and critic, N=64
  (``bench/gpu.py``'s ``scissors_policy``);
* cube (``bench/inference_latency.py``'s ``cube_policy``): A=17, H=6, P=2, T=4, N=24;

printed beside the float32 matmul rate of the same run (``bench/matmul_rate.py``), the
achieved fraction of it, and the paper's 0.24 s per scissors chunk on an RTX 3090 Ti
(appendix I). ViT-L on two cores takes seconds per chunk, so the scissors run times only a few
chunks (``--scissors-chunks``, after one warm-up chunk): its p99 is the worst of those few.
The GPU figures come from ``bench/gpu.py``.

Run:  .venv/bin/python bench/chunk_latency.py [--threads 2] [--scissors-chunks 3] [--cube-chunks 100] [--flops]
"""

from __future__ import annotations

import argparse
import os
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
from gpu import chunk_latency, scissors_observation, scissors_policy  # noqa: E402
from inference_latency import cube_observation, cube_policy  # noqa: E402
from matmul_rate import count_flops, matmul_rate  # noqa: E402

from sernf_policy.policy import Policy  # noqa: E402

#: Appendix I: "one action chunk of length H = 10 in approximately 0.24 seconds for the most
#: compute-intensive scissors task on an NVIDIA RTX 3090 Ti".
PAPER_SCISSORS_CHUNK_S = 0.24


def chunk_flops(policy: Policy, make_obs) -> int:
    """FLOP of one chunk (torch's FLOP counter; under no_grad because the counter trips over
    parameters inside act_batch's inference_mode, which changes no arithmetic)."""
    obs, prefix = make_obs(np.random.default_rng(7))
    with torch.no_grad():
        return count_flops(Policy.act_batch.__wrapped__, policy, obs, prefix)


def report(name: str, policy: Policy, make_obs, chunks: int, warmup: int, rate: float,
           flops: bool) -> tuple[float, float]:
    p50, p99 = chunk_latency(policy, make_obs, chunks, warmup=warmup)
    line = f"{name}: p50 {p50:9.1f} ms  p99 {p99:9.1f} ms  over {chunks} chunks"
    if flops:  # one more chunk under the FLOP counter (slow for the scissors config)
        n = chunk_flops(policy, make_obs)
        line += f"; {n / 1e9:7.1f} GFLOP/chunk, {n / (p50 / 1000) / rate * 100:5.1f} % of the matmul rate at p50"
    print(f"{line} (load {os.getloadavg()[0]:.1f} after)", flush=True)
    return p50, p99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--scissors-chunks", type=int, default=3, help="timed scissors chunks (after 1 warm-up)")
    parser.add_argument("--cube-chunks", type=int, default=100, help="timed cube chunks (after 5 warm-ups)")
    parser.add_argument("--skip-scissors", action="store_true")
    parser.add_argument("--flops", action="store_true", help="also count the FLOP of one chunk per config")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rate = matmul_rate()
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, load {load:.2f} at start; "
          f"matmul rate {rate / 1e9:.1f} GFLOP/s (1024^3 fp32)", flush=True)
    t0 = time.perf_counter()
    # The cube first: seconds on an idle machine, so its figure is taken before the long
    # scissors run gives other jobs time to start.
    report("cube chunk (A=17 H=6 P=2 T=4, N=24)", cube_policy(24), cube_observation, args.cube_chunks, 5, rate, args.flops)
    if not args.skip_scissors:
        policy = scissors_policy("cpu")
        p50, _ = report("scissors chunk (3x224x224 DINOv2-L/14 reg4, A=24 H=10 P=3 T=1, N=64)", policy,
                        scissors_observation, args.scissors_chunks, 1, rate, args.flops)
        print(f"  paper: {PAPER_SCISSORS_CHUNK_S * 1000:.0f} ms per chunk on an RTX 3090 Ti (appendix I); "
              f"this CPU is {p50 / 1000 / PAPER_SCISSORS_CHUNK_S:.0f}x slower at p50", flush=True)
        del policy
    print(f"load {os.getloadavg()[0]:.2f} at the end; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
