"""GPU figures in one short run (< 5 min on one modern GPU): chunk latency and learner rate.

* scissors config (appendix E / G1): three 224 x 224 camera views through DINOv2-L/14 with
  registers (random weights: ``pretrained=False`` costs the same), hand joints 17 + end-effector
  pose 7, A=24, H=10, P=3, T=1, paper-size flow and critic, best-of-N with N=64;
* cube config (as ``bench/inference_latency.py``): A=17, H=6, P=2, T=4, N=24;
* learner: offline-RL updates/s of the cube config at batch 48 and 512 (as
  ``bench/learner_throughput.py``);

each beside the GPU's float32 matmul rate of the same run. Targets: scissors chunk p99 <= 60 ms,
cube chunk p99 <= 10 ms.

Without a CUDA device it prints why it measured nothing and exits with status 0 (the CPU
figures come from ``make bench``).

Run:  .venv/bin/python bench/gpu.py [--chunks 100] [--updates 20] [--tf32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_data", "sernf_sim", "sernf_policy", "sernf_learner"):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))
sys.path.insert(0, str(_ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

NO_GPU_MESSAGE = ("bench/gpu.py: no CUDA device (torch.cuda.is_available() is False); nothing measured. "
                  "Run it on a machine with an NVIDIA GPU; `make bench` gives the CPU figures.")

SCISSORS_SPEC = {
    "front_rgb": {"kind": "rgb", "shape": [224, 224, 3]},
    "under_rgb": {"kind": "rgb", "shape": [224, 224, 3]},
    "left_rgb": {"kind": "rgb", "shape": [224, 224, 3]},
    "hand_joints": {"kind": "lowdim", "shape": [17]},
    "ee_pose": {"kind": "lowdim", "shape": [7]},
}


def scissors_policy(device: str):
    from sernf_policy.encoders import DinoV2EncoderConfig, EncoderConfig
    from sernf_policy.policy import Policy, PolicyConfig

    encoder = EncoderConfig(token_dim=512, image_backbone="dinov2", dinov2=DinoV2EncoderConfig(pretrained=False))
    cfg = PolicyConfig.create(SCISSORS_SPEC, 24, 1, 3, 10, encoder=encoder, num_samples=64)
    torch.manual_seed(0)
    policy = Policy(cfg)
    policy.fit_normalizers(np.random.default_rng(0).uniform(-1, 1, size=(1000, 24)))
    return policy.to(device).eval()


def scissors_observation(rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    obs = {}
    for key, spec in SCISSORS_SPEC.items():
        shape = (1, 1, *spec["shape"])
        obs[key] = (rng.integers(0, 256, size=shape, dtype=np.uint8) if spec["kind"] == "rgb"
                    else rng.normal(size=shape).astype(np.float32))
    return obs, rng.uniform(-0.5, 0.5, size=(1, 3, 24)).astype(np.float32)


def chunk_latency(policy, make_obs, chunks: int, warmup: int = 5) -> tuple[float, float]:
    """p50, p99 in ms of ``act_batch`` for one observation (host input to host chunk), on the
    policy's device (CPU or CUDA; ``bench/chunk_latency.py`` uses it on the CPU)."""
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + chunks):
        obs, prefix = make_obs(rng)
        sync()
        t0 = time.perf_counter()
        policy.act_batch(obs, prefix)  # returns numpy: includes the device-to-host copy
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    arr = 1000.0 * np.asarray(times)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def reference_agreement(policy, make_obs, seed: int = 7) -> str:
    """The optimised path's chunk and scores against the reference path's on this device, for
    one fixed observation and noise seed (what ``test_fast_paths`` checks on the CPU)."""
    from sernf_policy.fast_paths import reference_paths

    obs, prefix = make_obs(np.random.default_rng(seed))

    def act():
        gen = torch.Generator(device=policy.device).manual_seed(seed)
        return policy.act_batch(obs, prefix, generator=gen)

    fast_chunk, fast = act()
    with reference_paths():
        ref_chunk, ref = act()
    same_index = bool(np.array_equal(fast["index"], ref["index"]))
    return (f"same candidate chosen: {same_index}; max |chunk diff| {np.abs(fast_chunk - ref_chunk).max():.2e}, "
            f"|q diff| {np.abs(fast['q'] - ref['q']).max():.2e}, "
            f"|log_prob diff| {np.abs(fast['log_prob'] - ref['log_prob']).max():.2e}")


def graph_agreement(policy, make_obs, seeds: int = 5) -> str:
    """The CUDA-graph path's chunks and scores against the eager path's (same noise seeds)."""
    graph = policy._acting_graph
    same, chunk_diff, q_diff = 0, 0.0, 0.0
    for seed in range(seeds):
        obs, prefix = make_obs(np.random.default_rng(100 + seed))
        outs = []
        for acting_graph in (graph, None):
            policy._acting_graph = acting_graph
            gen = torch.Generator(device=policy.device).manual_seed(seed)
            outs.append(policy.act_batch(obs, prefix, generator=gen))
        policy._acting_graph = graph
        (g_chunk, g_info), (e_chunk, e_info) = outs
        same += int(np.array_equal(g_info["index"], e_info["index"]))
        chunk_diff = max(chunk_diff, float(np.abs(g_chunk - e_chunk).max()))
        q_diff = max(q_diff, float(np.abs(g_info["q"] - e_info["q"]).max()))
    return f"same candidate in {same}/{seeds}; max |chunk diff| {chunk_diff:.2e}, |q diff| {q_diff:.2e}"


def graph_latency(policy, make_obs, chunks: int, label: str) -> None:
    """Capture the CUDA graph of one chunk, time it, and check it against the eager path."""
    t0 = time.perf_counter()
    policy.capture_cuda_graph(batch_size=1)
    capture_s = time.perf_counter() - t0
    p50, p99 = chunk_latency(policy, make_obs, chunks)
    graph = policy._acting_graph
    print(f"{label} chunk, CUDA graph (captured in {capture_s:.1f} s): p50 {p50:6.1f} ms  p99 {p99:6.1f} ms "
          f"(a candidate on the action clamp in {graph.clamped_replays} of {graph.replays} replays); "
          f"vs eager: {graph_agreement(policy, make_obs)}")
    policy.release_cuda_graph()


def profile_chunk(policy, make_obs, rows: int = 20) -> str:
    """torch.profiler's table (host and device activity) for one chunk after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    obs, prefix = make_obs(np.random.default_rng(0))
    policy.act_batch(obs, prefix)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if policy.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        policy.act_batch(obs, prefix)
    sort = "cuda_time_total" if policy.device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100, help="timed chunks per config")
    parser.add_argument("--updates", type=int, default=20, help="timed learner updates per batch size")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (faster, not bit-equal to fp32)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time the learner in bf16 mixed precision (trainer.precision: bf16), interleaved")
    parser.add_argument("--skip-scissors", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's table for one cube chunk (where its time goes)")
    parser.add_argument("--device", default="cuda",
                        help="torch device; 'cpu' only dry-runs this script's code paths (tiny counts suffice)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(NO_GPU_MESSAGE)
        return 0
    from inference_latency import cube_observation, cube_policy
    from learner_throughput import bench as learner_bench
    from matmul_rate import matmul_rate

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    device = args.device
    t_start = time.perf_counter()
    rate = matmul_rate(size=8192 if device.startswith("cuda") else 1024, device=device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU (dry run)"
    print(f"{name}, torch {torch.__version__}, tf32 {'on' if args.tf32 else 'off'}; "
          f"matmul rate {rate / 1e12:.1f} TFLOP/s (8192^3 fp32)")
    if not args.skip_scissors:
        policy = scissors_policy(device)
        p50, p99 = chunk_latency(policy, scissors_observation, args.chunks)
        print(f"scissors chunk (3x224x224 DINOv2-L/14 reg4, A=24 H=10 P=3 T=1, N=64): p50 {p50:6.1f} ms  "
              f"p99 {p99:6.1f} ms  (target p99 <= 60 ms)")
        if device.startswith("cuda"):
            graph_latency(policy, scissors_observation, args.chunks, "scissors")
        del policy
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    policy = cube_policy(24, device)
    p50, p99 = chunk_latency(policy, cube_observation, args.chunks)
    print(f"cube chunk (A=17 H=6 P=2 T=4, N=24): p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  (target p99 <= 10 ms)")
    print(f"cube chunk, optimised vs reference path on {device}: {reference_agreement(policy, cube_observation)}")
    if args.profile:
        print(profile_chunk(policy, cube_observation))
    if device.startswith("cuda"):
        graph_latency(policy, cube_observation, args.chunks, "cube")
    del policy
    for batch in (48, 512):
        r = learner_bench("paper", args.updates, 3, device, batch=batch, bf16=args.bf16)
        for label, key in (("", "optimised"), (" bf16", "bf16")):
            if key not in r:
                continue
            sec = r[key]
            print(f"learner offline_rl cube paper size{label}, batch {batch:3d}: {1 / sec:7.1f} updates/s "
                  f"({1000 * sec:6.1f} ms/update, {r['flops'] / sec / rate * 100:5.1f} % of the fp32 matmul rate)")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
