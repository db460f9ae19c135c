"""Replay sampling throughput: can the sampler feed the learner?

Builds a zarr EpisodeStore on disk (temp dir) with the cube layout (docs/design.md §6: obs
``hand_joints`` 17-d and ``cube_pose`` 7-d lowdim, A=17, T=4, P=2, H=6, 20 Hz), then reports

* time to write the store, time to open it and load the in-memory snapshot,
* transitions/s drawn by ``TransitionSampler.sample()`` at batch 256 (torch tensors out),
  and by a ``MixedSampler`` (rho=0.5, two stores) — median over several timed runs,
* with ``--updates-per-s`` (the learner's measured gradient updates/s, one batch each, from
  the learner bench): how many times faster the sampler is than the learner consumes.

Speed is measured here, never asserted in tests (docs/design.md §7).

    OMP_NUM_THREADS=1 PYTHONPATH=src/sernf_learner .venv/bin/python bench/replay_throughput.py --help
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from sernf_data.spec import ObsKeySpec
from sernf_data.store import EpisodeStore, StoreSpec
from sernf_learner.transitions import ChunkTiming, MixedSampler, TransitionSampler

CUBE_SPEC = StoreSpec(
    obs={"hand_joints": ObsKeySpec((17,), "lowdim"), "cube_pose": ObsKeySpec((7,), "lowdim")},
    action_dim=17,
    control_rate_hz=20.0,
)
CUBE_TIMING = ChunkTiming(T=4, P=2, H=6)


def build_store(root: Path, episodes: int, steps: int, source: str, seed: int) -> float:
    """Write ``episodes`` random episodes of ``steps`` steps; returns seconds taken."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore(root, mode="a", spec=CUBE_SPEC)
    start = time.perf_counter()
    for i in range(episodes):
        store.append_episode(
            {
                "hand_joints": rng.normal(size=(steps, 17)).astype(np.float32),
                "cube_pose": rng.normal(size=(steps, 7)).astype(np.float32),
                "action": rng.normal(size=(steps, 17)).astype(np.float32),
                "reward": (rng.random(steps) < 0.01).astype(np.float32),
                "timestamp": i * steps / 20.0 + np.arange(steps) / 20.0,
            },
            {"source": source, "success": bool(i % 2), "terminated": bool(i % 3 == 0)},
        )
    return time.perf_counter() - start


def timed_rate(sample, batch_size: int, batches: int, repeats: int) -> tuple[float, list[float]]:
    """Median transitions/s over ``repeats`` runs of ``batches`` calls to ``sample()``."""
    sample()  # warm-up (first-touch allocations)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            sample()
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return statistics.median(rates), rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200, help="episodes in the store (default 200)")
    parser.add_argument("--steps", type=int, default=200, help="steps per episode (default 200)")
    parser.add_argument("--batch-size", type=int, default=256, help="transitions per batch (default 256)")
    parser.add_argument("--batches", type=int, default=200, help="batches per timed run (default 200)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; the median is reported (default 7)")
    parser.add_argument(
        "--updates-per-s", type=float, default=None,
        help="learner gradient updates/s (one batch each), measured by the learner bench",
    )
    parser.add_argument("--dir", type=Path, default=None, help="build the stores here instead of a temp dir")
    args = parser.parse_args(argv)
    for name in ("episodes", "steps", "batch_size", "batches", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        offline_root, online_root = Path(tmp) / "offline.zarr", Path(tmp) / "online.zarr"
        write_s = build_store(offline_root, args.episodes, args.steps, "demo", seed=0)
        build_store(online_root, max(1, args.episodes // 4), args.steps, "online", seed=1)
        total = args.episodes * args.steps
        print(f"store: {args.episodes} episodes x {args.steps} steps = {total} steps, cube layout "
              f"(hand_joints 17, cube_pose 7, A=17), timing T={CUBE_TIMING.T} P={CUBE_TIMING.P} H={CUBE_TIMING.H}")
        print(f"write: {write_s:.2f} s ({args.episodes / write_s:.0f} episodes/s, {total / write_s:,.0f} steps/s)")

        open_times = []
        for _ in range(3):
            start = time.perf_counter()
            store = EpisodeStore(offline_root, mode="r")
            store.load_arrays()
            open_times.append(time.perf_counter() - start)
        print(f"open + load snapshot: {statistics.median(open_times) * 1e3:.1f} ms (median of 3)")

        sampler = TransitionSampler(store, CUBE_TIMING, args.batch_size, seed=0)
        rate, rates = timed_rate(sampler.sample, args.batch_size, args.batches, args.repeats)
        print(f"TransitionSampler.sample(): {rate:,.0f} transitions/s = {rate / args.batch_size:,.0f} batches/s "
              f"at batch {args.batch_size} (median of {args.repeats}; runs {min(rates):,.0f}..{max(rates):,.0f})")

        online = EpisodeStore(online_root, mode="r")
        mixed = MixedSampler(
            sampler, TransitionSampler(online, CUBE_TIMING, args.batch_size, seed=1, is_offline=False), rho=0.5, seed=2
        )
        mixed_rate, _ = timed_rate(mixed.sample, args.batch_size, args.batches, args.repeats)
        print(f"MixedSampler.sample() (rho=0.5): {mixed_rate:,.0f} transitions/s = "
              f"{mixed_rate / args.batch_size:,.0f} batches/s")

        if args.updates_per_s is None:
            print("learner consumption: not given; fill --updates-per-s from the learner bench "
                  "(gradient updates/s at this batch size) to get the headroom ratio")
        else:
            need = args.updates_per_s * args.batch_size
            print(f"learner consumes {args.updates_per_s:g} updates/s = {need:,.0f} transitions/s; "
                  f"sampler/learner ratio: {rate / need:.1f}x (mixed {mixed_rate / need:.1f}x)"
                  + ("" if min(rate, mixed_rate) >= need else "  <-- sampling is the bottleneck"))


if __name__ == "__main__":
    main()
