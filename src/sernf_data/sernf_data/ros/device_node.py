"""The part of a hardware lifecycle node that is the same for every device.

Every device node (hand driver, cameras) leaves its device in the same way: on cleanup, on
shutdown, on an error transition and when the process exits without a transition
(``spin_node`` calls ``shutdown_workers``), it releases the device — stops its loop and leaves
it safe — and says so. A subclass implements ``release_device`` and the transitions that differ
(configure, activate, deactivate).
"""

from __future__ import annotations

from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn

__all__ = ["DeviceLifecycleNode"]


class DeviceLifecycleNode(LifecycleNode):
    """A lifecycle node owning one device; ``state_label`` mirrors the lifecycle state for the
    node's diagnostics (reading the state machine from a timer callback is not thread-safe)."""

    def __init__(self, node_name: str, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.state_label = "unconfigured"
        self.last_refusal = ""
        """Why the last transition was refused (kept for the diagnostics)."""

    def refuse(self, transition: str, reason: str) -> TransitionCallbackReturn:
        """Fail a transition with its reason in the log and in ``last_refusal``."""
        self.last_refusal = f"{transition} refused: {reason}"
        self.get_logger().error(self.last_refusal)
        return TransitionCallbackReturn.FAILURE

    def release_device(self, what: str) -> None:
        """Stop using the device and leave it safe; ``what`` names the occasion for the log."""
        raise NotImplementedError

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.release_device("cleanup")
        self.state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.release_device("shutdown")
        self.state_label = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self.release_device("error")
        self.state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def shutdown_workers(self) -> None:
        """Process exit (``spin_node``): leave the device safe even without a transition."""
        self.release_device("exit")
