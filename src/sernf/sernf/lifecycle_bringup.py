"""Bringing a graph's lifecycle nodes (drivers, cameras) to active: the pure state machine.

The ROS shell (`sernf.lifecycle_manager_node`) asks `BringUp.due()` which requests to send
(`get_state`, `configure`, `activate` on `/<node>/...`), sends them, and reports what came back.
Per node: first its current state is read (a node may already be configured, e.g. after the
manager restarted), then configure and activate are requested in turn. A refused or unanswered
transition is retried after a backoff that doubles from `retry_period_s` up to
`retry_max_period_s`: the simulated bus's pseudo-terminal appears a moment after the driver
starts, a camera may be unplugged, the robot may still be booting. A node that reached active
and later leaves it on its own (a driver that deactivated itself after a fault, a reflex) is
reported, not re-activated: it left for a reason an operator has to look at
(`ros2 lifecycle set /<node> activate`), unless `reactivate` is set.

No rclpy and no message types here (docs/design.md §2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["BringUp", "LifecycleManagerConfig", "NodeStatus", "Request", "state_label"]

#: lifecycle_msgs/msg/State ids -> labels (primary states and transition states).
_STATE_LABELS = {
    0: "unknown", 1: "unconfigured", 2: "inactive", 3: "active", 4: "finalized",
    10: "configuring", 11: "cleaningup", 12: "shuttingdown", 13: "activating", 14: "deactivating",
    15: "errorprocessing",
}
_NODE_NAME = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


def state_label(state_id: int) -> str:
    """The label of a lifecycle_msgs/msg/State id ('unknown' for ids outside the standard)."""
    return _STATE_LABELS.get(int(state_id), "unknown")


@dataclass(frozen=True)
class LifecycleManagerConfig:
    """Parameters of lifecycle_manager (declared as ROS parameters with these defaults)."""

    node_names: tuple[str, ...] = ()
    """Lifecycle nodes to bring to active, in this order of first attempts (names as in the
    graph, e.g. orca_hand_driver, or fully qualified, /robot/oak_front)."""
    retry_period_s: float = 1.0
    """Wait before retrying a refused or unanswered transition; doubles with each refusal ..."""
    retry_max_period_s: float = 10.0
    """... up to this."""
    transition_timeout_s: float = 10.0
    """A transition not answered within this long counts as refused (opening a camera takes
    a few seconds; the answer of a node that hangs never comes)."""
    diagnostics_period_s: float = 1.0
    """Period of the /diagnostics status of every managed node (and of re-reading the state of
    the active ones, to notice one that left active)."""
    reactivate: bool = False
    """Re-activate a node that left active on its own. Off: it is reported and stays inactive
    (a driver deactivates itself for a reason an operator has to look at)."""
    deactivate_on_shutdown: bool = True
    """On shutdown (Ctrl-C) deactivate the active nodes, so the drivers hold and leave the
    hardware safe before their processes stop."""

    def __post_init__(self) -> None:
        names = tuple(self.node_names)
        object.__setattr__(self, "node_names", names)
        for name in names:
            if not isinstance(name, str) or not _NODE_NAME.match(name):
                raise ValueError(f"node_names: {name!r} is not a ROS node name")
        if len({_qualified(n) for n in names}) != len(names):
            raise ValueError(f"node_names must be unique, got {list(names)}")
        for name in ("retry_period_s", "retry_max_period_s", "transition_timeout_s", "diagnostics_period_s"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if self.retry_max_period_s < self.retry_period_s:
            raise ValueError(f"retry_max_period_s ({self.retry_max_period_s}) must be >= retry_period_s "
                             f"({self.retry_period_s})")


def _qualified(name: str) -> str:
    return name if name.startswith("/") else "/" + name


@dataclass(frozen=True)
class Request:
    """One service call the shell is to make."""

    node: str
    """Fully qualified node name (/orca_hand_driver)."""
    kind: str
    """get_state, configure or activate."""


@dataclass
class NodeStatus:
    """What the manager knows about one node."""

    name: str
    state: str = "unknown"
    """Last observed lifecycle state; 'unreachable' while its services do not answer."""
    pending: str = ""
    """Request in flight ('' if none)."""
    pending_since: float = 0.0
    next_attempt_at: float = 0.0
    refusals: int = 0
    """Consecutive refused / unanswered requests (reset by a success)."""
    last_refusal: str = ""
    reached_active: bool = False
    left_active: bool = False
    """It was active and is not any more (reported; not re-activated unless configured)."""
    transitions: list[str] = field(default_factory=list)
    """Succeeded transitions, for the log and the tests."""


class BringUp:
    """The bring-up state machine of all managed nodes; the shell feeds it the clock."""

    def __init__(self, config: LifecycleManagerConfig, now: float) -> None:
        self.config = config
        self.nodes = {_qualified(n): NodeStatus(_qualified(n), next_attempt_at=now) for n in config.node_names}
        self._next_poll = now + config.diagnostics_period_s

    # -- what to send -----------------------------------------------------------------------
    def due(self, now: float) -> list[Request]:
        """Requests to send now; each is marked pending until `on_*` reports its outcome."""
        poll = now >= self._next_poll
        if poll:
            self._next_poll = now + self.config.diagnostics_period_s
        requests = []
        for node in self.nodes.values():
            if node.pending or now < node.next_attempt_at:
                continue
            kind = self._next_step(node, poll)
            if kind:
                node.pending, node.pending_since = kind, now
                requests.append(Request(node.name, kind))
        return requests

    def _next_step(self, node: NodeStatus, poll: bool) -> str:
        if node.state in ("unknown", "unreachable"):
            return "get_state"
        if node.state == "unconfigured":
            return "" if node.left_active and not self.config.reactivate else "configure"
        if node.state == "inactive":
            return "" if node.left_active and not self.config.reactivate else "activate"
        if node.state == "finalized":
            return ""
        # active (watch it), or a transition state (read again until it settles)
        return "get_state" if poll or node.state != "active" else ""

    def timed_out(self, now: float) -> list[Request]:
        """Requests in flight for longer than transition_timeout_s; each is then a refusal."""
        late = [Request(n.name, n.pending) for n in self.nodes.values()
                if n.pending and now - n.pending_since > self.config.transition_timeout_s]
        for request in late:
            self.on_refused(request, now, f"no answer within {self.config.transition_timeout_s:g} s")
        return late

    # -- what came back ---------------------------------------------------------------------
    def on_unreachable(self, request: Request, now: float) -> None:
        """The node's lifecycle service is not (yet) there: its process is still starting."""
        node = self.nodes[request.node]
        node.pending = ""
        node.state = "unreachable"
        node.next_attempt_at = now + self.config.retry_period_s

    def on_state(self, request: Request, label: str, now: float) -> None:
        """get_state answered with ``label``."""
        node = self.nodes[request.node]
        node.pending = ""
        self._observe(node, label)

    def _observe(self, node: NodeStatus, label: str) -> None:
        if node.reached_active and label != "active" and not node.left_active:
            node.left_active = True
        if label == "active":
            node.reached_active, node.left_active = True, False
        node.state = label

    def on_transition(self, request: Request, now: float) -> str:
        """configure / activate succeeded; returns the log line."""
        node = self.nodes[request.node]
        node.pending = ""
        node.refusals, node.last_refusal = 0, ""
        node.transitions.append(request.kind)
        node.next_attempt_at = now
        if request.kind == "activate":
            node.left_active = False  # an explicit activation starts a new life
        self._observe(node, {"configure": "inactive", "activate": "active"}[request.kind])
        return f"{node.name}: {request.kind} succeeded, now {node.state}"

    def on_refused(self, request: Request, now: float, reason: str) -> str:
        """A request was refused or not answered; returns the log line (with the retry time)."""
        node = self.nodes[request.node]
        node.pending = ""
        node.refusals += 1
        delay = min(self.config.retry_period_s * 2.0 ** (node.refusals - 1), self.config.retry_max_period_s)
        node.next_attempt_at = now + delay
        node.last_refusal = f"{request.kind} refused: {reason}" if reason else f"{request.kind} refused"
        # Read the state again before the next attempt: a refused transition leaves the node
        # where it was, an unanswered one may still be running.
        node.state = "unreachable" if request.kind == "get_state" else "unknown"
        return f"{node.name}: {node.last_refusal}; retry {node.refusals + 1} in {delay:.1f} s"

    # -- reporting and shutdown -------------------------------------------------------------
    def all_active(self) -> bool:
        return all(n.state == "active" for n in self.nodes.values())

    def to_deactivate(self) -> list[str]:
        """Nodes to deactivate on shutdown (active or possibly active), in reverse order."""
        if not self.config.deactivate_on_shutdown:
            return []
        return [n.name for n in reversed(self.nodes.values()) if n.state in ("active", "activating")]

    def report(self, now: float) -> list[tuple[str, str, dict[str, object]]]:
        """(level 'ok' | 'warn' | 'error', message, values) per node, for /diagnostics."""
        rows = []
        for node in self.nodes.values():
            values: dict[str, object] = {"node": node.name, "state": node.state, "refusals": node.refusals}
            if node.last_refusal:
                values["last_refusal"] = node.last_refusal
            if node.state == "active":
                level, message = "ok", "active"
            elif node.left_active:
                level, message = "error", f"left active on its own, now {node.state}" + (
                    "" if self.config.reactivate else " (ros2 lifecycle set <node> activate after checking it)")
            elif node.last_refusal:
                level = "warn"
                message = f"{node.state}: {node.last_refusal}; retry in {max(0.0, node.next_attempt_at - now):.1f} s"
            else:
                level, message = "warn", f"bringing up ({node.state})"
            rows.append((level, message, values))
        return rows
