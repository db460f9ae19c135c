"""Serve a simulated 17-servo ORCA bus on a pty for manual bring-up of the hand driver.

    python -m sernf_sim.dynamixel_bus [--ids 1-17] [--seconds N]

Prints the pty path; start the driver with ``port:=<path>``. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import time

from .bus import SimulatedDynamixelBus


def _ids(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", default="1-17", help="servo ids: 'a-b' or 'a,b,c' (default 1-17)")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    args = parser.parse_args(argv)
    with SimulatedDynamixelBus(_ids(args.ids)) as bus:
        print(f"simulated Dynamixel bus on {bus.port} (servos {args.ids})", flush=True)
        deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("stopping", flush=True)
        print(f"served {len(bus.instructions)} instructions", flush=True)


if __name__ == "__main__":
    main()
