"""Learner throughput: Stage III (offline RL) updates per second (DESIGN §7: measured, not asserted).

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
Prints one line per config: updates/s and ms per update (median of timed updates after warm-up).
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

import torch  # noqa: E402

from sernf_learner.offline_rl import ActorConfig, OfflineRL, OfflineRLConfig  # noqa: E402
from sernf_learner.td_targets import CriticConfig, TargetCritic  # noqa: E402
from sernf_policy.encoders import EncoderConfig  # noqa: E402
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


def bench(name: str, updates: int, warmup: int, device: str) -> tuple[float, float, int]:
    token_dim, flow, critic, batch = CONFIGS[name]
    cfg = PolicyConfig.create(SPEC, A, T, P, H, encoder=EncoderConfig(token_dim=token_dim), flow=flow, critic=critic)
    policy = Policy(cfg).to(device)
    policy.fit_normalizers(torch.rand(1000, A) * 2 - 1)
    learner = OfflineRL(policy, TargetCritic(policy), OfflineRLConfig(
        steps=updates, batch_size=batch, critic=CriticConfig(), actor=ActorConfig()))
    gen = torch.Generator().manual_seed(0)
    batches = [make_batch(batch, gen) for _ in range(4)]
    if device != "cpu":
        batches = [{k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
                    for k, v in b.items()} for b in batches]
    times = []
    for i in range(warmup + updates):
        t0 = time.perf_counter()
        learner.update(batches[i % len(batches)])
        if device != "cpu":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return 1.0 / median, 1000.0 * median, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["small", "paper"], choices=sorted(CONFIGS))
    parser.add_argument("--updates", type=int, default=5, help="timed updates per config")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"offline_rl updates on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"cube timing A={A} H={H} P={P} T={T}")
    for name in args.configs:
        rate, ms, batch = bench(name, args.updates, args.warmup, args.device)
        print(f"{name:6s} batch {batch:4d}: {rate:8.2f} updates/s  ({ms:8.1f} ms/update, "
              f"{rate * batch:9.0f} transitions/s)")


if __name__ == "__main__":
    main()
