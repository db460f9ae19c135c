"""The test's own participant in a ROS graph: a node in a private rclpy context that spins on
demand, calls services with a deadline, and drives a lifecycle node's transitions.

Tests subclass ``GraphProbe`` and add their publishers and subscriptions to ``self.node``.

Service answers can be lost right after discovery: ``wait_for_service`` returns once the
server's request reader is matched, and Fast DDS drops a response whose writer has not yet
matched the client's response reader (seen once in a full-suite run: a configure that was never
answered within 30 s). Reading the node's state is harmless to repeat, so ``state`` sends it
again; a transition is not, so ``transition`` asks the node's state before it sends one again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import rclpy
from lifecycle_msgs.msg import State, Transition
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
        """Send ``request`` once and return the answer; fail if none comes within ``timeout``."""
        timeout = self.wait_s if timeout is None else timeout
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout), f"{client.srv_name} did not answer"
        return future.result()

    def call_idempotent(self, client, request, timeout: float | None = None, attempts: int = 3):
        """Like ``call``, sending the request again when an answer is lost (only for requests
        that change nothing, such as reading a state)."""
        timeout = self.wait_s if timeout is None else timeout
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
        for _ in range(attempts):
            future = client.call_async(request)
            if self.spin_until(future.done, timeout / attempts):
                return future.result()
        raise AssertionError(f"{client.srv_name} answered none of {attempts} requests within {timeout:g} s")

    def transition(self, transition_id: int, attempts: int = 3) -> bool:
        """Request a lifecycle transition (``lifecycle_msgs/Transition.TRANSITION_*``); its success.

        When the answer does not come within ``wait_s / attempts``, the node's state decides:
        in the transition's goal state, the transition happened and only its answer was lost;
        still in a primary state it could start from, the request is sent again; in a
        transition state, the answer is awaited further."""
        goal = _GOAL_STATE.get(transition_id)
        request = ChangeState.Request(transition=Transition(id=transition_id))
        window = self.wait_s / attempts
        assert self.change_state.wait_for_service(timeout_sec=self.wait_s), \
            f"{self.change_state.srv_name} not available"
        for _ in range(attempts):
            future = self.change_state.call_async(request)
            if self.spin_until(future.done, window):
                return future.result().success
            current = self.get_state_id()
            if goal is not None and current == goal:
                return True
            if current not in _PRIMARY_STATES and self.spin_until(future.done, window):
                return future.result().success
        raise AssertionError(f"{self.change_state.srv_name}: transition {transition_id} answered none of "
                             f"{attempts} requests within {self.wait_s:g} s (state: {self.state()})")

    def get_state_id(self) -> int:
        """The lifecycle node's current state id (``lifecycle_msgs/State.PRIMARY_STATE_*``...)."""
        return self.call_idempotent(self.get_state, GetState.Request()).current_state.id

    def state(self) -> str:
        """The lifecycle node's current state label."""
        return self.call_idempotent(self.get_state, GetState.Request()).current_state.label


_PRIMARY_STATES = {State.PRIMARY_STATE_UNCONFIGURED, State.PRIMARY_STATE_INACTIVE,
                   State.PRIMARY_STATE_ACTIVE, State.PRIMARY_STATE_FINALIZED}
#: Where a successful transition leaves the node.
_GOAL_STATE = {
    Transition.TRANSITION_CONFIGURE: State.PRIMARY_STATE_INACTIVE,
    Transition.TRANSITION_CLEANUP: State.PRIMARY_STATE_UNCONFIGURED,
    Transition.TRANSITION_ACTIVATE: State.PRIMARY_STATE_ACTIVE,
    Transition.TRANSITION_DEACTIVATE: State.PRIMARY_STATE_INACTIVE,
    Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: State.PRIMARY_STATE_FINALIZED,
    Transition.TRANSITION_INACTIVE_SHUTDOWN: State.PRIMARY_STATE_FINALIZED,
    Transition.TRANSITION_ACTIVE_SHUTDOWN: State.PRIMARY_STATE_FINALIZED,
}
