"""The speed benchmarks run and print their figures (never timing assertions, house rule):
bench/gpu.py without a GPU, bench/inference_latency.py and bench/learner_throughput.py in
their shortest form."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, check=False,
    )


def test_gpu_bench_says_why_it_measured_nothing_without_a_gpu():
    result = _run("gpu.py", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    assert "no CUDA device" in result.stdout and "nothing measured" in result.stdout
    assert "p99" not in result.stdout


def test_inference_latency_prints_percentiles_beside_the_matmul_rate():
    result = _run("inference_latency.py", "--chunks", "2", "--warmup", "1", "--threads", "1", "--reference",
                  "--node-threads")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"matmul rate: [0-9.]+ GFLOP/s", out)
    flops = re.search(r"FLOP per chunk: ([0-9.]+) G optimised, ([0-9.]+) G reference", out)
    assert flops and 0 < float(flops.group(1)) < float(flops.group(2))
    assert re.search(r"optimised chunk: p50 +[0-9.]+ ms +p99 +[0-9.]+ ms", out)
    assert re.search(r"reference chunk: p50 +[0-9.]+ ms +p99 +[0-9.]+ ms", out)
    # policy_node's thread layout, with the node's transient checkpoint thread and a persistent one.
    assert re.search(r"node layout, checkpoint thread ends after each load \(policy_node\): p50 +[0-9.]+ ms", out)
    assert re.search(r"node layout, persistent checkpoint thread \(before\): p50 +[0-9.]+ ms", out)


def test_learner_throughput_prints_updates_and_matmul_fraction():
    result = _run("learner_throughput.py", "--configs", "small", "--updates", "1", "--warmup", "0", "--threads", "1",
                  "--bf16")
    assert result.returncode == 0, result.stderr
    assert re.search(r"matmul rate [0-9.]+ GFLOP/s", result.stdout)
    assert re.search(r"small +batch +128 optimised: +[0-9.]+ updates/s .* % of the matmul rate", result.stdout)
    # Mixed precision, timed beside it: against both matmul rates, and the speed-up.
    assert re.search(r"bfloat16 matmul rate [0-9.]+ GFLOP/s", result.stdout)
    assert re.search(r"small +batch +128 bf16 +: +[0-9.]+ updates/s .* % of the float32 matmul rate, +[0-9.]+ % "
                     r"of the bfloat16 one", result.stdout)
    assert re.search(r"small +bf16 speed-up [0-9.]+x over float32", result.stdout)
    refused = _run("learner_throughput.py", "--configs", "small", "--updates", "1", "--bf16", "--reference")
    assert refused.returncode != 0 and "--bf16" in refused.stderr
