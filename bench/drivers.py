"""Robot driver benchmarks: the ORCA hand control loop, and the franka_bridge latency.

ORCA: the real driver core (``orca_hand_driver.hand.OrcaHand``, the code the lifecycle node's
loop thread runs) against the simulated 17-servo Dynamixel bus served on a pty by another
process (``python -m sernf_sim.dynamixel_bus``), so the servos answer from their own
interpreter as real ones answer from their own firmware. Each cycle: one sync read of the
10-byte present block of 17 servos, one sync write of 17 goals (a moving sinusoidal command),
plus the 1 Hz temperature read. Reports the cycle time p50 / p99 / max, the achieved rate at
the configured 40 Hz, and the free-running rate (no sleep: the loop's headroom).
Targets (issue): ≥ 40 Hz with p99 cycle ≤ 10 ms. On a robot the wire adds ~1-4 ms at 3 Mbps.

franka_bridge: ``bench/franka_bridge_latency.py`` (written with the bridge) when present.

    source env.sh && python bench/drivers.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "src" / "orca_hand_driver" / "config"


def _start_bus(seconds: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-u", "-m", "sernf_sim.dynamixel_bus", "--seconds", str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if " on /dev/" not in line:
        proc.kill()
        raise RuntimeError(f"the simulated bus did not start: {line!r}")
    return proc, line.split(" on ")[1].split()[0]


def measure_orca_loop(seconds: float = 10.0, rate_hz: float = 40.0) -> dict[str, float]:
    from orca_hand_driver.calibration import Calibration, MotorLimits, save_calibration
    from orca_hand_driver.hand import DriverConfig, OrcaHand
    from orca_hand_driver.hand_model import load_hand_model, model_file

    model = load_hand_model(model_file(CONFIG, "orca_v1_right"))
    tmp = Path(tempfile.mkdtemp(prefix="orca_bench_"))
    calibration = tmp / "calibration.yaml"
    save_calibration(calibration, Calibration(model.name, model.fingerprint(),
                                              {j.name: MotorLimits(j.motor, 1024, 3072) for j in model.joints}), model)
    bus, port = _start_bus(2 * seconds + 30)
    try:
        cfg = DriverConfig(port=port, config_dir=str(CONFIG), calibration_file=str(calibration),
                           control_rate_hz=rate_hz, read_timeout_ms=20.0)
        hand = OrcaHand(cfg, CONFIG)
        hand.configure()
        hand.activate(time.monotonic())
        mid = (hand.mapping.lower + hand.mapping.upper) / 2
        amp = (hand.mapping.upper - hand.mapping.lower) / 4

        def run(duration: float, paced: bool) -> tuple[np.ndarray, float, int]:
            durations, missing = [], 0
            start = next_time = time.monotonic()
            while time.monotonic() - start < duration:
                now = time.monotonic()
                q = mid + amp * math.sin(2 * math.pi * 0.5 * (now - start))
                hand.command([], q.tolist(), now)
                report = hand.cycle(now)
                durations.append(report.duration_s)
                missing += bool(report.missing)
                if paced:
                    next_time += 1.0 / rate_hz
                    delay = next_time - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        next_time = time.monotonic()
            return np.array(durations), len(durations) / (time.monotonic() - start), missing

        paced, paced_rate, paced_missing = run(seconds, paced=True)
        free, free_rate, _ = run(min(seconds, 5.0), paced=False)
        hand.cleanup(torque_off=True)
    finally:
        bus.terminate()
        bus.wait(timeout=10)
    return {
        "cycles": len(paced), "rate_hz": paced_rate, "target_hz": rate_hz,
        "cycle_p50_ms": float(np.percentile(paced, 50) * 1e3), "cycle_p99_ms": float(np.percentile(paced, 99) * 1e3),
        "cycle_max_ms": float(paced.max() * 1e3), "cycles_with_missing_servo": paced_missing,
        "free_running_hz": free_rate, "free_p50_ms": float(np.percentile(free, 50) * 1e3),
        "free_p99_ms": float(np.percentile(free, 99) * 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="paced run length")
    parser.add_argument("--rate", type=float, default=40.0, help="control rate (Hz)")
    parser.add_argument("--skip-franka", action="store_true")
    args = parser.parse_args()

    r = measure_orca_loop(args.seconds, args.rate)
    print(f"ORCA hand loop, 17 servos on the simulated bus (pty, bus in its own process), {r['cycles']} cycles:")
    print(f"  paced at {r['target_hz']:g} Hz: achieved {r['rate_hz']:.1f} Hz, cycle p50 {r['cycle_p50_ms']:.2f} ms, "
          f"p99 {r['cycle_p99_ms']:.2f} ms, max {r['cycle_max_ms']:.2f} ms, "
          f"cycles with a missing servo {r['cycles_with_missing_servo']}")
    print(f"  free-running: {r['free_running_hz']:.0f} Hz, cycle p50 {r['free_p50_ms']:.2f} ms, p99 {r['free_p99_ms']:.2f} ms")

    # ---- franka_bridge: command → equilibrium latency (bench/franka_bridge_latency.py) --------
    if not args.skip_franka:
        bench_file = Path(__file__).with_name("franka_bridge_latency.py")
        if bench_file.exists():
            sys.path.insert(0, str(bench_file.parent))
            from franka_bridge_latency import measure_bridge_latency

            f = measure_bridge_latency()
            print("franka_bridge command -> equilibrium latency: "
                  + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in f.items()))
        else:
            print("franka_bridge latency: bench/franka_bridge_latency.py not present")


if __name__ == "__main__":
    main()
