"""SenderGate over a real rclpy graph: named senders pass at once, messages whose sender the
graph does not know wait (in order) and are then handed on as from nobody."""

from __future__ import annotations

import time

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import String

from sernf_data.ros.sender_identity import SenderGate, publisher_node_name

pytestmark = pytest.mark.ros


@pytest.fixture
def graph(ros_env):
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    listener = Node("listener", context=context)
    talker = Node("talker", namespace="/cell", context=context)
    for node in (listener, talker):
        executor.add_node(node)
    try:
        yield executor, listener, talker
    finally:
        executor.shutdown()
        listener.destroy_node()
        talker.destroy_node()
        rclpy.shutdown(context=context)


def spin_until(executor, predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_named_senders_pass_unknown_ones_wait_in_order_then_count_as_nobody(graph):
    executor, listener, talker = graph
    handled: list[tuple[str, str]] = []
    gate = SenderGate(listener, "/chatter", lambda msg, sender: handled.append((msg.data, sender)), timeout_s=0.5)
    listener.create_subscription(String, "/chatter", gate.admit, 10)
    listener.create_timer(0.05, gate.retry)
    publisher = talker.create_publisher(String, "/chatter", 10)
    assert spin_until(executor, lambda: publisher.get_subscription_count() >= 1, 10.0)

    publisher.publish(String(data="hello"))
    assert spin_until(executor, lambda: handled, 10.0)
    assert handled == [("hello", "/cell/talker")] and gate.held == 0

    # A publisher gid the graph has never seen (as before discovery names it): it waits, and
    # the named message behind it waits too, so order is kept.
    forged = {"publisher_gid": {"data": bytes(range(16))}}
    assert publisher_node_name(listener, "/chatter", forged) is None
    assert publisher_node_name(listener, "/chatter", {}) == ""
    start = time.monotonic()
    gate.admit(String(data="who"), forged)
    publisher.publish(String(data="after"))
    spin_until(executor, lambda: gate.pending == 2, 2.0)
    assert handled[1:] == [] and gate.pending == 2
    assert spin_until(executor, lambda: len(handled) == 3, 5.0), handled
    assert time.monotonic() - start >= 0.5
    assert handled[1:] == [("who", ""), ("after", "/cell/talker")]


def test_a_flood_from_unknown_senders_is_bounded(graph):
    _, listener, _ = graph
    handled: list[str] = []
    gate = SenderGate(listener, "/chatter", lambda msg, sender: handled.append(sender), timeout_s=60.0, max_pending=3)
    for i in range(5):
        gate.admit(String(data=str(i)), {"publisher_gid": {"data": bytes([i]) * 16}})
    assert gate.pending == 3 and handled == ["", ""]
    # No allow-list configured: nothing is held, every message goes on at once as from nobody.
    unchecked = SenderGate(listener, "/chatter", lambda msg, sender: handled.append(sender), check=False)
    unchecked.admit(String(data="x"), {"publisher_gid": {"data": bytes(16)}})
    assert unchecked.pending == 0 and handled == ["", "", ""]
    with pytest.raises(ValueError, match="max_pending"):
        SenderGate(listener, "/chatter", print, max_pending=0)
