"""franka_bridge latency: relative command -> equilibrium pose over DDS, and the core alone.

Starts the simulated arm and the bridge as processes in an isolated ROS domain, activates the
bridge, sends ``n`` commands (one at a time, each after the previous equilibrium arrived) and
times publish -> equilibrium received. Also times ``BridgeCore.on_command`` in-process.
Prints figures; asserts nothing about them.

    python bench/franka_bridge_latency.py [--n 500]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


def measure_core_latency(n: int = 2000) -> dict[str, float]:
    """Per-command time of the pure core (validation, composition, limits)."""
    from franka_bridge.config import FrankaBridgeConfig
    from franka_bridge.core import BridgeCore

    core = BridgeCore(FrankaBridgeConfig(command_frame="ee", pose_timeout_s=1e9))
    q_down = np.array([0.0, 1.0, 0.0, 0.0])
    core.on_pose(np.array([0.5, 0.0, 0.4]), q_down, "base", 0.0)
    core.activate(0.0)
    rng = np.random.default_rng(0)
    samples = []
    for k in range(n):
        dp = rng.normal(scale=0.01, size=3)
        dq = np.array([1.0, *rng.normal(scale=0.02, size=3)])
        dq /= np.linalg.norm(dq)
        t0 = time.perf_counter()
        core.on_command(dp, dq, "ee", 1e-3 * k)
        samples.append(time.perf_counter() - t0)
    return _percentiles(samples)


def measure_bridge_latency(n: int = 500, warmup: int = 20, timeout_s: float = 60.0) -> dict[str, float]:
    """Command -> equilibrium latency over DDS (bridge + simulated arm as processes).

    Returns ``{"dds_p50_ms", "dds_p99_ms", "dds_max_ms", "core_p50_ms", "core_p99_ms",
    "core_max_ms", "n"}``."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    env = dict(os.environ, ROS_DOMAIN_ID=str(random.SystemRandom().randint(101, 200)),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    logs = Path(tempfile.mkdtemp(prefix="franka_bench_"))
    procs = []
    for name, module, params in (
        ("sim_arm", "sernf_sim.sim_arm_node", []),
        # huge workspace / cone and a long watchdog: every command is forwarded, none held
        ("franka_bridge", "franka_bridge.franka_bridge_node",
         ["-p", "command_frame:=ee", "-p", "pose_timeout_s:=1.0", "-p", "command_timeout_s:=5.0",
          "-p", "activation_timeout_s:=10.0", "-p", "max_orientation_deviation_rad:=3.14159",
          "-p", "workspace_low:=[-10.0,-10.0,-10.0]", "-p", "workspace_high:=[10.0,10.0,10.0]"]),
    ):
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([sys.executable, "-m", module, "--ros-args", *params], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                      start_new_session=True))
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("franka_bridge_bench", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    received: dict[int, float] = {}

    def on_equilibrium(msg: PoseStamped) -> None:
        received[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = time.perf_counter()

    node.create_subscription(PoseStamped, "/franka/equilibrium_pose", on_equilibrium, 100)
    pub = node.create_publisher(PoseStamped, "/franka/relative_pose_command", 10)
    change = node.create_client(ChangeState, "/franka_bridge/change_state")

    def spin_until(predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            executor.spin_once(timeout_sec=0.005)
        return predicate()

    def transition(tid: int) -> None:
        if not change.wait_for_service(timeout_sec=timeout_s):
            raise RuntimeError(f"bridge lifecycle service not available (logs: {logs})")
        future = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
        if not spin_until(future.done, timeout_s) or not future.result().success:
            raise RuntimeError(f"lifecycle transition {tid} failed (logs: {logs})")

    try:
        transition(Transition.TRANSITION_CONFIGURE)
        transition(Transition.TRANSITION_ACTIVATE)
        # wait for discovery between our publisher and the bridge
        spin_until(lambda: pub.get_subscription_count() > 0, timeout_s)
        samples = []
        sign = 1.0
        for k in range(n + warmup):
            sign = -sign  # back and forth: the arm stays in place
            msg = PoseStamped()
            msg.header.frame_id = "ee"
            stamp_ns = time.time_ns() + k  # unique key
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            msg.pose.position.x = 0.001 * sign
            msg.pose.orientation.w = 1.0
            t0 = time.perf_counter()
            pub.publish(msg)
            if not spin_until(lambda key=stamp_ns: key in received, 5.0):
                raise RuntimeError(f"no equilibrium for command {k} (logs: {logs})")
            if k >= warmup:
                samples.append(received[stamp_ns] - t0)
        dds = {f"dds_{k}": v for k, v in _percentiles(samples).items()}
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    core = {f"core_{k}": v for k, v in measure_core_latency().items()}
    return {**dds, **core, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="timed commands")
    args = parser.parse_args()
    result = measure_bridge_latency(n=args.n)
    print(f"franka_bridge command -> equilibrium over DDS ({result['n']} commands): "
          f"p50 {result['dds_p50_ms']:.2f} ms, p99 {result['dds_p99_ms']:.2f} ms, max {result['dds_max_ms']:.2f} ms")
    print(f"franka_bridge core per command: p50 {result['core_p50_ms'] * 1e3:.0f} us, "
          f"p99 {result['core_p99_ms'] * 1e3:.0f} us, max {result['core_max_ms'] * 1e3:.0f} us")


if __name__ == "__main__":
    main()
