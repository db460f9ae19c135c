"""What the simulated world (sernf_sim.sim_world) costs per second of simulated time.

Times one physics tick (``SimWorld.advance`` of ``--tick-ms`` simulated ms during an episode)
and one set of the three camera frames at each ``--sizes`` image side, and prints the share of
one CPU core the world needs at ``--camera-hz``. The node keeps real time while that share
stays well below 1.

Run:  source env.sh && python bench/sim_world.py [--ticks 300] [--frames 10] [--sizes 64 224]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from orca_hand_driver.hand_model import load_hand_model, model_file
from sernf_sim.sim_world import SimWorld, SimWorldConfig

CONFIG = Path(__file__).resolve().parents[1] / "src" / "orca_hand_driver" / "config"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--tick-ms", type=float, default=10.0)
    parser.add_argument("--camera-hz", type=float, default=10.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    args = parser.parse_args()
    hand = load_hand_model(model_file(CONFIG, "orca_v1_right"))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            world = SimWorld(SimWorldConfig(bus_link=f"{tmp}/bus", image_size=size), list(hand.joints))
            try:
                world.start_episode(-1)
                for name in world.cameras:  # the renderer is created on the first frame
                    world.render(name)
                start = time.perf_counter()
                for _ in range(args.ticks):
                    world.advance(args.tick_ms / 1e3)
                tick_s = (time.perf_counter() - start) / args.ticks
                start = time.perf_counter()
                for _ in range(args.frames):
                    for name in world.cameras:
                        world.render(name)
                frames_s = (time.perf_counter() - start) / args.frames
            finally:
                world.close()
            share = tick_s / (args.tick_ms / 1e3) + frames_s * args.camera_hz
            print(f"image {size:3d} px: physics tick ({args.tick_ms:g} ms simulated) {tick_s * 1e3:6.2f} ms, "
                  f"{len(world.cameras)} camera frames {frames_s * 1e3:6.1f} ms -> {share:.2f} of a core in real "
                  f"time at {args.camera_hz:g} Hz")


if __name__ == "__main__":
    main()
