"""The lifecycle manager's bring-up state machine, without ROS (sernf.lifecycle_bringup)."""

from __future__ import annotations

import pytest
from sernf.lifecycle_bringup import BringUp, LifecycleManagerConfig, Request, state_label


def config(**kw) -> LifecycleManagerConfig:
    base = dict(node_names=("orca_hand_driver", "oak_front"), retry_period_s=1.0, retry_max_period_s=4.0,
                transition_timeout_s=5.0, diagnostics_period_s=1.0)
    base.update(kw)
    return LifecycleManagerConfig(**base)


def kinds(requests: list[Request]) -> list[tuple[str, str]]:
    return [(r.node, r.kind) for r in requests]


def test_configure_then_activate_each_node_after_reading_its_state():
    bringup = BringUp(config(), now=0.0)
    first = bringup.due(0.0)
    assert kinds(first) == [("/orca_hand_driver", "get_state"), ("/oak_front", "get_state")]
    assert bringup.due(0.0) == []  # nothing twice while in flight
    bringup.on_state(first[0], "unconfigured", 0.1)
    bringup.on_state(first[1], "inactive", 0.1)  # already configured (e.g. the manager restarted)
    second = bringup.due(0.2)
    assert kinds(second) == [("/orca_hand_driver", "configure"), ("/oak_front", "activate")]
    assert "succeeded, now inactive" in bringup.on_transition(second[0], 0.3)
    bringup.on_transition(second[1], 0.3)
    assert not bringup.all_active()
    third = bringup.due(0.4)
    assert kinds(third) == [("/orca_hand_driver", "activate")]
    bringup.on_transition(third[0], 0.5)
    assert bringup.all_active()
    assert bringup.nodes["/orca_hand_driver"].transitions == ["configure", "activate"]
    assert [row[0] for row in bringup.report(0.5)] == ["ok", "ok"]


def test_a_refused_configure_is_retried_with_doubling_backoff_and_its_reason_reported():
    bringup = BringUp(config(node_names=("orca_hand_driver",)), now=0.0)
    bringup.on_state(bringup.due(0.0)[0], "unconfigured", 0.0)
    now, delays = 0.0, []
    for _ in range(4):
        (request,) = bringup.due(now)
        if request.kind == "get_state":  # after each refusal the state is read again first
            bringup.on_state(request, "unconfigured", now)
            (request,) = bringup.due(now)
        assert request.kind == "configure"
        line = bringup.on_refused(request, now, "cannot open /tmp/bus: No such file or directory")
        assert "configure refused: cannot open /tmp/bus" in line
        retry_at = bringup.nodes["/orca_hand_driver"].next_attempt_at
        delays.append(retry_at - now)
        assert bringup.due(retry_at - 0.01) == []  # not before the backoff
        now = retry_at
    assert delays == [1.0, 2.0, 4.0, 4.0]  # doubles, capped at retry_max_period_s
    level, message, values = bringup.report(now)[0]
    assert level == "warn" and "No such file" in message and values["refusals"] == 4
    (request,) = bringup.due(now)
    bringup.on_state(request, "unconfigured", now)
    (request,) = bringup.due(now)
    bringup.on_transition(request, now)  # the bus appeared
    node = bringup.nodes["/orca_hand_driver"]
    assert node.refusals == 0 and node.last_refusal == "" and node.state == "inactive"


def test_unanswered_transition_times_out_as_a_refusal_and_late_answers_do_not_count():
    bringup = BringUp(config(node_names=("oak_front",), transition_timeout_s=2.0), now=0.0)
    bringup.on_state(bringup.due(0.0)[0], "unconfigured", 0.0)
    (request,) = bringup.due(0.0)
    assert bringup.timed_out(2.0) == []
    assert kinds(bringup.timed_out(2.01)) == [("/oak_front", "configure")]
    node = bringup.nodes["/oak_front"]
    assert node.pending == "" and "no answer within 2 s" in node.last_refusal and node.state == "unknown"


def test_unreachable_node_is_polled_until_its_services_appear():
    bringup = BringUp(config(node_names=("franka_bridge",)), now=0.0)
    (request,) = bringup.due(0.0)
    bringup.on_unreachable(request, 0.0)
    assert bringup.due(0.5) == [] and bringup.report(0.5)[0][1] == "bringing up (unreachable)"
    assert kinds(bringup.due(1.0)) == [("/franka_bridge", "get_state")]


def test_a_node_that_leaves_active_is_reported_and_not_reactivated_unless_asked():
    for reactivate in (False, True):
        bringup = BringUp(config(node_names=("orca_hand_driver",), reactivate=reactivate), now=0.0)
        bringup.on_state(bringup.due(0.0)[0], "active", 0.0)
        assert bringup.due(0.5) == []  # active: only watched, once per diagnostics period
        (poll,) = bringup.due(1.0)
        assert poll.kind == "get_state"
        bringup.on_state(poll, "inactive", 1.0)  # the driver deactivated itself (servo fault)
        level, message, _ = bringup.report(1.0)[0]
        assert level == "error" and "left active" in message
        after = bringup.due(1.1)
        assert kinds(after) == ([("/orca_hand_driver", "activate")] if reactivate else [])


def test_shutdown_deactivates_active_nodes_last_first():
    bringup = BringUp(config(node_names=("a", "b", "c")), now=0.0)
    for request, label in zip(bringup.due(0.0), ("active", "unconfigured", "active"), strict=True):
        bringup.on_state(request, label, 0.0)
    assert bringup.to_deactivate() == ["/c", "/a"]
    assert BringUp(config(node_names=("a",), deactivate_on_shutdown=False), 0.0).to_deactivate() == []


def test_state_labels_of_lifecycle_msgs_ids():
    assert [state_label(i) for i in (1, 2, 3, 4, 10, 13, 99)] == [
        "unconfigured", "inactive", "active", "finalized", "configuring", "activating", "unknown"]


@pytest.mark.parametrize(("kw", "match"), [
    (dict(node_names=("bad name",)), "not a ROS node name"),
    (dict(node_names=("a", "/a")), "unique"),
    (dict(retry_period_s=0.0), "retry_period_s"),
    (dict(retry_period_s=5.0, retry_max_period_s=1.0), "retry_max_period_s"),
    (dict(transition_timeout_s=float("nan")), "transition_timeout_s"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)
