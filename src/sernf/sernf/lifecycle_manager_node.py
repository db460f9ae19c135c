"""lifecycle_manager: brings a graph's lifecycle nodes (drivers, cameras) to active.

    ros2 run sernf lifecycle_manager --ros-args -p node_names:=[orca_hand_driver,franka_bridge]

The graph launch files start it with `node_names` = the graph's lifecycle nodes. For each it
calls `/<node>/get_state`, then `/<node>/change_state` configure and activate
(lifecycle_msgs), retrying a refused transition with backoff (`sernf.lifecycle_bringup`), and
logs every refusal with the node's own reason: the last warning or error the node logged on
/rosout since the request (a transition's answer carries only success or failure). Publishes
each node's state on /diagnostics. On Ctrl-C / SIGTERM it deactivates the nodes it activated,
so that the drivers hold and leave the hardware safe, before exiting.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Log
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from sernf.lifecycle_bringup import BringUp, LifecycleManagerConfig, Request, state_label
from sernf_data.ros.diagnostics import diagnostic_status
from sernf_data.ros.parameters import declare_config

PARAMETERS = LifecycleManagerConfig
_TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
                "deactivate": Transition.TRANSITION_DEACTIVATE}
_LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}
_WARN = 30  # rcl_interfaces/msg/Log WARN (ERROR 40, FATAL 50)


def _logger_name(node: str) -> str:
    """rcl's logger name of a node: its fully qualified name without the leading slash, '.'-separated."""
    return node.strip("/").replace("/", ".")


class LifecycleManagerNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("lifecycle_manager", **kwargs)
        self.cfg: LifecycleManagerConfig = declare_config(self, LifecycleManagerConfig)
        if not self.cfg.node_names:
            raise ValueError("node_names is empty: nothing to manage")
        self.bringup = BringUp(self.cfg, time.monotonic())
        self._change = {name: self.create_client(ChangeState, f"{name}/change_state") for name in self.bringup.nodes}
        self._get = {name: self.create_client(GetState, f"{name}/get_state") for name in self.bringup.nodes}
        # The nodes' own warnings and errors, by logger name: why a transition was refused.
        self._last_problem: dict[str, tuple[float, str]] = {}
        self.create_subscription(Log, "/rosout", self._on_log,
                                 QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(0.1, self._tick)
        self.create_timer(self.cfg.diagnostics_period_s, self._publish_diagnostics)
        self.get_logger().info(f"bringing {list(self.bringup.nodes)} to active")

    # -- bring-up ---------------------------------------------------------------------------
    def _on_log(self, msg: Log) -> None:
        if msg.level >= _WARN:
            self._last_problem[msg.name] = (time.monotonic(), msg.msg)

    def _reason(self, node: str, kind: str, since: float) -> str:
        logged = self._last_problem.get(_logger_name(node))
        if not logged or logged[0] < since:
            return ""
        # Our nodes log "configure refused: <why>" (DeviceLifecycleNode.refuse): keep the why.
        return logged[1].removeprefix(f"{kind} refused: ")

    def _tick(self) -> None:
        now = time.monotonic()
        for request in self.bringup.timed_out(now):
            self.get_logger().warning(f"{request.node}: {request.kind} not answered within "
                                      f"{self.cfg.transition_timeout_s:g} s; retrying later")
        for request in self.bringup.due(now):
            client = (self._get if request.kind == "get_state" else self._change)[request.node]
            if not client.service_is_ready():
                self.bringup.on_unreachable(request, now)
                self.get_logger().info(f"{request.node}: waiting for its lifecycle services",
                                       throttle_duration_sec=10.0)
                continue
            if request.kind == "get_state":
                future = client.call_async(GetState.Request())
            else:
                future = client.call_async(ChangeState.Request(transition=Transition(id=_TRANSITIONS[request.kind])))
            future.add_done_callback(lambda f, r=request, t=now: self._on_answer(r, t, f))

    def _on_answer(self, request: Request, sent: float, future: Any) -> None:
        node = self.bringup.nodes[request.node]
        if node.pending != request.kind or node.pending_since != sent:
            return  # answered after its timeout: already counted as refused
        now = time.monotonic()
        exc = future.exception()
        if exc is not None:
            self.get_logger().error(self.bringup.on_refused(request, now, f"service call failed: {exc}"))
            return
        response = future.result()
        if request.kind == "get_state":
            label = state_label(response.current_state.id)
            previous = node.state
            self.bringup.on_state(request, label, now)
            if node.left_active and previous == "active":
                self.get_logger().error(f"{request.node} left active on its own, now {label}"
                                        + ("" if self.cfg.reactivate else "; not re-activating it (check it, then "
                                           f"ros2 lifecycle set {request.node} activate)"))
        elif response.success:
            self.get_logger().info(self.bringup.on_transition(request, now))
            if self.bringup.all_active():
                self.get_logger().info(f"all {len(self.bringup.nodes)} managed nodes are active")
        else:
            reason = self._reason(request.node, request.kind, sent) or "the node gave no reason on /rosout (see its log)"
            self.get_logger().error(self.bringup.on_refused(request, now, reason))

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        for level, message, values in self.bringup.report(time.monotonic()):
            array.status.append(diagnostic_status(f"lifecycle_manager: {values['node']}", str(values["node"]),
                                                  _LEVELS[level], message, values))
        self._diagnostics.publish(array)

    # -- shutdown ---------------------------------------------------------------------------
    def deactivate_all(self, executor: SingleThreadedExecutor) -> None:
        """Deactivate the active nodes (last brought up first), each within transition_timeout_s."""
        for name in self.bringup.to_deactivate():
            client = self._change[name]
            if not client.service_is_ready():
                self.get_logger().warning(f"{name}: cannot deactivate, its lifecycle service is gone "
                                          "(the node leaves the device safe on its own exit)")
                continue
            future = client.call_async(ChangeState.Request(transition=Transition(id=_TRANSITIONS["deactivate"])))
            deadline = time.monotonic() + self.cfg.transition_timeout_s
            while not future.done() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
            if future.done() and future.exception() is None and future.result().success:
                self.get_logger().info(f"{name}: deactivated")
            else:
                self.get_logger().warning(f"{name}: deactivate not confirmed "
                                          f"({future.exception() or 'refused or no answer'})")


def main(args: list[str] | None = None) -> None:
    # Our own signal handling: rclpy's would shut the context down at once, and the nodes could
    # no longer be deactivated.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = None
    try:
        try:
            node = LifecycleManagerNode()
        except ValueError as exc:
            rclpy.logging.get_logger("lifecycle_manager").fatal(f"invalid configuration: {exc}")
            raise SystemExit(1) from exc
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        node.get_logger().info("shutting down: deactivating the managed nodes")
        node.deactivate_all(executor)
        executor.shutdown()
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
