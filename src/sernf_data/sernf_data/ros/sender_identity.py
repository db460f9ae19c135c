"""Which node published a message, for topics where only some nodes may speak.

The sender is looked up in the DDS graph: the publisher gid in the message info against the
topic's publisher endpoints. Discovery is not atomic: a publisher's endpoint (and its first
messages) can arrive before the participant's node list, so for a moment the graph knows
the gid but not the node behind it (rmw reports ``_NODE_NAME_UNKNOWN_``), or not even the
gid. Refusing such a message would lose an authorised episode START under load; accepting
it would let an unknown sender in. ``SenderGate`` therefore holds these messages, in
arrival order, until the graph names their sender or ``timeout_s`` passes (then they are
handed on with an empty sender, which every allow-list refuses).

Without DDS-Security the name is only what the sender declared: any process can call its
node /policy. The check keeps honest mistakes (a test tool, a second operator console, a
stale labeler) out; SROS2 permissions make the name an identity.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rclpy.node import Node

__all__ = ["SenderGate", "publisher_node_name"]

_UNKNOWN_MARKERS = ("_NODE_NAME_UNKNOWN_", "_NODE_NAMESPACE_UNKNOWN_")


def publisher_node_name(node: Node, topic: str, info: Any) -> str | None:
    """Fully qualified name of the node that published a message on ``topic``.

    Returns '' when the message carries no publisher gid (nothing can ever name it) and
    None while the graph has not yet learned which node owns the gid.
    """
    gid = info.get("publisher_gid") if isinstance(info, dict) else None
    if not gid:
        return ""
    data = bytes(gid.get("data", b"")) if isinstance(gid, dict) else bytes(gid)
    for endpoint in node.get_publishers_info_by_topic(topic):
        if bytes(endpoint.endpoint_gid) == data:
            if endpoint.node_name in _UNKNOWN_MARKERS or endpoint.node_namespace in _UNKNOWN_MARKERS:
                return None
            return f"{endpoint.node_namespace.rstrip('/')}/{endpoint.node_name}"
    return None


class SenderGate:
    """Hands each message of one topic to ``handler(message, sender)`` in arrival order, once
    its sender is known (or after ``timeout_s``, with sender '').

    ``retry`` must run periodically (a timer) in the same mutually exclusive callback group
    as the subscription that calls ``admit``, so the two never run at once. With ``check``
    false (no allow-list configured) every message is handed on at once, with sender ''.
    """

    def __init__(self, node: Node, topic: str, handler: Callable[[Any, str], None],
                 timeout_s: float = 5.0, max_pending: int = 256, check: bool = True) -> None:
        if timeout_s < 0 or max_pending < 1:
            raise ValueError(f"timeout_s must be >= 0 and max_pending >= 1, got {timeout_s}, {max_pending}")
        self._node = node
        self.topic = topic
        self._handler = handler
        self.check = check
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self._pending: deque[tuple[float, Any, Any]] = deque()
        self.held = 0  # messages that had to wait for discovery (a diagnostic figure)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(self, message: Any, info: Any) -> None:
        if not self.check:
            self._handler(message, "")
            return
        if not self._pending:
            sender = publisher_node_name(self._node, self.topic, info)
            if sender is not None:
                self._handler(message, sender)
                return
        self.held += 1
        self._pending.append((time.monotonic(), message, info))
        while len(self._pending) > self.max_pending:  # a flood from nobody the graph knows
            _, oldest, _ = self._pending.popleft()
            self._handler(oldest, "")
        self.retry()

    def retry(self) -> None:
        now = time.monotonic()
        while self._pending:
            arrived, message, info = self._pending[0]
            sender = publisher_node_name(self._node, self.topic, info)
            if sender is None:
                if now - arrived < self.timeout_s:
                    return  # keep the order: later messages wait behind this one
                sender = ""
            self._pending.popleft()
            self._handler(message, sender)
