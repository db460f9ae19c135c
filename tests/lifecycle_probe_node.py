"""A small lifecycle node for the lifecycle manager's DDS test: a 'device' that is a file.

    python tests/lifecycle_probe_node.py --ros-args -r __node:=probe -p device:=/tmp/x -p state_log:=/tmp/log

configure is refused (with the reason logged, as our drivers do) until the file ``device``
exists, like the simulated bus's pseudo-terminal that appears a moment after the driver
starts; every transition it goes through is appended to ``state_log`` (one label per line),
so the test can see a deactivation even after the process has gone.
"""

from __future__ import annotations

from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn


class ProbeNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__("probe")
        self.device = Path(self.declare_parameter("device", "").value)
        self.state_log = Path(self.declare_parameter("state_log", "").value)

    def _note(self, label: str) -> None:
        with open(self.state_log, "a", encoding="utf-8") as fh:
            fh.write(label + "\n")

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        if not self.device.exists():
            self.get_logger().error(f"configure refused: cannot open {self.device}: no such device")
            self._note("refused")
            return TransitionCallbackReturn.FAILURE
        self._note("inactive")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._note("active")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._note("deactivated")
        return super().on_deactivate(state)


def main() -> None:
    rclpy.init()
    node = ProbeNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
