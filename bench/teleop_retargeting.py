"""Glove retargeting rate: frames/s of the key-vector solver on one CPU core.

Streams the Studio Live stand-in's ``demo`` script (open → fist → open → pinch, wrist circles)
at 60 fps through the real path — JSON packet → parser → palm-frame key points → warm-started
Gauss-Newton retargeting — and reports, separately, the parse and the retargeting cost per
frame (median and 99th percentile) and the frames/s each sustains. The node needs >= 60 frames/s
of retargeting (Studio streams at 60 fps; the node commands at 30 Hz).

    OMP_NUM_THREADS=1 python bench/teleop_retargeting.py [--frames 1200] [--iterations 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from sernf_sim import studio_live_sender as stand_in
from teleop_rokoko.hand_kinematics import load_hand_joints
from teleop_rokoko.retargeting import RetargetConfig, Retargeter, human_hand
from teleop_rokoko.studio_live import parse_packet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1200, help="frames to time (60 fps script time)")
    parser.add_argument("--iterations", type=int, default=6, help="Gauss-Newton steps per frame")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    packets = []
    for k in range(args.frames):
        pose, pos, rot = stand_in.script_frame("demo", k / 60.0)
        packets.append(json.dumps(stand_in.make_packet(pose, pos, rot, k / 60.0)).encode())
    retargeter = Retargeter(load_hand_joints(), RetargetConfig(iterations=args.iterations))
    parse_s, solve_s, energies = [], [], []
    for datagram in packets:
        t0 = time.perf_counter()
        hand = human_hand(parse_packet(datagram).hand("right"), "right")
        t1 = time.perf_counter()
        retargeter.retarget(hand)
        t2 = time.perf_counter()
        parse_s.append(t1 - t0)
        solve_s.append(t2 - t1)
        _, energy = retargeter.solve(hand.points, retargeter.q_raw, iterations=1)
        energies.append(energy)

    def row(name: str, seconds: list[float]) -> str:
        median, p99 = statistics.median(seconds), float(np.percentile(seconds, 99))
        return f"{name:<22} median {median * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms  → {1 / median:7.0f} frames/s"

    print(f"teleop retargeting bench: {args.frames} frames of the demo script, "
          f"{args.iterations} Gauss-Newton steps/frame, one core")
    print(row("parse + key points", parse_s))
    print(row("retargeting", solve_s))
    print(row("both", [a + b for a, b in zip(parse_s, solve_s, strict=True)]))
    print(f"residual energy after the frame's steps: median {statistics.median(energies):.2e} "
          f"(m², weighted; 1e-4 ≈ 1 cm error on one key vector)")


if __name__ == "__main__":
    main()
