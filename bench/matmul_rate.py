"""The machine's own float32 (or bfloat16) matmul rate, measured in the same run as a benchmark.

Benchmarks quote their speed as a fraction of this rate (FLOP/s of the work done divided by the
FLOP/s of a large square matmul on the same threads, measured moments apart), so a figure
taken on a loaded or a different machine still says how close the code is to the hardware.

Run alone:  .venv/bin/python bench/matmul_rate.py [--size 1024] [--threads N] [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def matmul_rate(size: int = 1024, repeats: int = 7, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Median FLOP/s of ``[size, size] @ [size, size]`` in ``dtype`` (2 size^3 FLOP each)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up (thread pool start, first-touch of the buffers)
    rates = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize()
        rates.append(2.0 * size**3 / (time.perf_counter() - t0))
    return statistics.median(rates)


def count_flops(fn, *args, **kwargs) -> int:
    """Total FLOP of one call of ``fn`` (torch's FlopCounterMode: matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--bf16", action="store_true", help="also the bfloat16 rate")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rate = matmul_rate(args.size)
    print(f"matmul rate ({args.size}^3 float32, {torch.get_num_threads()} threads): {rate / 1e9:.1f} GFLOP/s")
    if args.bf16:
        rate = matmul_rate(args.size, dtype=torch.bfloat16)
        print(f"matmul rate ({args.size}^3 bfloat16, {torch.get_num_threads()} threads): {rate / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
