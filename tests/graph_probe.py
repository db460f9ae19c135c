"""The test's own participant in a ROS graph: a node in a private rclpy context that spins on
demand, calls services with a deadline, and drives a lifecycle node's transitions.

Tests subclass ``GraphProbe`` and add their publishers and subscriptions to ``self.node``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

__all__ = ["GraphProbe"]


class GraphProbe:
    """One node in its own context (several probes and in-process nodes never share state)."""

    def __init__(self, name: str, lifecycle_node: str | None = None, wait_s: float = 30.0) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.wait_s = wait_s
        if lifecycle_node is not None:
            self.change_state = self.node.create_client(ChangeState, f"/{lifecycle_node}/change_state")
            self.get_state = self.node.create_client(GetState, f"/{lifecycle_node}/get_state")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def spin_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Spin until ``predicate()`` holds or ``timeout`` (default ``wait_s``) passes."""
        deadline = time.monotonic() + (self.wait_s if timeout is None else timeout)
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)

    def call(self, client, request, timeout: float | None = None):
        timeout = self.wait_s if timeout is None else timeout
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout), f"{client.srv_name} did not answer"
        return future.result()

    def transition(self, transition_id: int) -> bool:
        """Request a lifecycle transition (``lifecycle_msgs/Transition.TRANSITION_*``)."""
        return self.call(self.change_state, ChangeState.Request(transition=Transition(id=transition_id))).success

    def state(self) -> str:
        """The lifecycle node's current state label."""
        return self.call(self.get_state, GetState.Request()).current_state.label
