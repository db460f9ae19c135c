"""The test probe's lifecycle calls survive an answer that does not come in time.

A stand-in lifecycle server (its own context and executor thread) answers ``change_state``
late or never, the way a response lost after discovery looks to the client; the probe must
then decide by the node's state instead of failing or sending a configure twice.
"""

from __future__ import annotations

import threading
import time

import pytest
import rclpy
from graph_probe import GraphProbe
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node


class SlowLifecycleServer:
    """Serves ``/slow/change_state`` and ``/slow/get_state``; configure moves to inactive at once
    and answers after ``answer_delay_s`` (or never, when ``None``), for the first ``slow_answers``
    requests."""

    def __init__(self, answer_delay_s: float | None, slow_answers: int = 1) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("slow", context=self.context)
        self.state = State.PRIMARY_STATE_UNCONFIGURED
        self.change_requests = 0
        self.answer_delay_s = answer_delay_s
        self.slow_answers = slow_answers
        self.stop = threading.Event()
        group = ReentrantCallbackGroup()
        self.node.create_service(ChangeState, "/slow/change_state", self._change, callback_group=group)
        self.node.create_service(GetState, "/slow/get_state", self._get, callback_group=group)
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _change(self, request, response):
        self.change_requests += 1
        if request.transition.id != Transition.TRANSITION_CONFIGURE or self.state != State.PRIMARY_STATE_UNCONFIGURED:
            response.success = False
            return response
        self.state = State.PRIMARY_STATE_INACTIVE
        if self.change_requests <= self.slow_answers:
            # Hold the answer back (for good when answer_delay_s is None: a lost response).
            self.stop.wait(self.answer_delay_s if self.answer_delay_s is not None else 3600.0)
        response.success = True
        return response

    def _get(self, request, response):
        response.current_state = State(id=self.state, label={1: "unconfigured", 2: "inactive"}[self.state])
        return response

    def close(self) -> None:
        self.stop.set()
        self.executor.shutdown()
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def slow_server(ros_env, request):
    server = SlowLifecycleServer(*request.param)
    yield server
    server.close()


@pytest.fixture
def probe(ros_env):
    p = GraphProbe("slow_probe", lifecycle_node="slow", wait_s=3.0)
    yield p
    p.close()


@pytest.mark.ros
@pytest.mark.parametrize("slow_server", [(None,), (30.0,)], indirect=True, ids=["never", "late"])
def test_transition_whose_answer_is_lost_is_decided_by_the_state(slow_server, probe):
    started = time.monotonic()
    assert probe.transition(Transition.TRANSITION_CONFIGURE)
    # Decided after one answer window (wait_s / 3), not after the late answer, and without a
    # second configure (which this node, now inactive, would refuse).
    assert time.monotonic() - started < 2.9
    assert slow_server.change_requests == 1
    assert probe.state() == "inactive"


@pytest.mark.ros
@pytest.mark.parametrize("slow_server", [(0.0,)], indirect=True, ids=["prompt"])
def test_prompt_answers_pass_through_including_refusals(slow_server, probe):
    assert probe.transition(Transition.TRANSITION_CONFIGURE)
    assert not probe.transition(Transition.TRANSITION_CONFIGURE)  # already inactive: refused
    assert slow_server.change_requests == 2
