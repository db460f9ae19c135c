"""Running a SERNF node process: init, spin, and an orderly shutdown on Ctrl-C / SIGTERM.

Every node's ``main()`` is the same: build the node (a configuration error is fatal, with the
reason in the log), spin it on a multi-threaded executor, and on the way out stop its worker
threads before destroying it, so that e.g. an episode being committed is not cut short.
"""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

__all__ = ["spin_node"]


def spin_node(make_node: Callable[[], Node], name: str, num_threads: int = 2,
              args: list[str] | None = None) -> None:
    """Run ``make_node()`` until shutdown; exit 1 on an invalid configuration or a fatal error
    (a node reports one through a ``fatal_error`` attribute that is not None)."""
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        # One thread: rclpy's MultiThreadedExecutor keeps polling ready-but-running callbacks and
        # burns a core of its own (ros2/rclpy#1223); nodes whose heavy work runs in their own
        # worker pools (the policy node) do better on the single-threaded executor.
        executor = (SingleThreadedExecutor() if num_threads == 1
                    else MultiThreadedExecutor(num_threads=num_threads))
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        rclpy.logging.get_logger(name).info("shutting down")
    except RuntimeError:
        # A signal shuts the context down while the executor builds its wait set: rclpy then
        # raises RCLError (a RuntimeError) instead of ExternalShutdownException.
        if rclpy.ok():
            raise
        rclpy.logging.get_logger(name).info("shutting down")
    except ValueError as exc:
        rclpy.logging.get_logger(name).fatal(f"invalid configuration: {exc}")
        raise SystemExit(1) from exc
    finally:
        if node is not None:
            shutdown_workers = getattr(node, "shutdown_workers", None)
            if shutdown_workers is not None:
                shutdown_workers()
            node.destroy_node()
        rclpy.try_shutdown()
    if getattr(node, "fatal_error", None) is not None:
        raise SystemExit(1)
