"""DDS domain ids for tests that start ROS graphs, disjoint between pytest-xdist workers.

``make test`` runs the suite on several worker processes at once (pytest-xdist). Two graphs on
the same domain would discover each other (localhost discovery still spans processes), so each
worker draws from its own slice of the range; within a worker tests run one after another.
Fast DDS maps a domain to UDP ports 7400 + 250·id (+ offsets); ids up to 100 keep them below
Linux's ephemeral port range (32768 and up), where the kernel hands out ports to other sockets.
"""

from __future__ import annotations

import itertools
import os
import random

# Successive calls walk through the slice from a random start instead of drawing at random: a
# test never gets the domain its predecessor used, so whatever that test's graph left behind
# while shutting down (a process still exiting, its DDS announcements) cannot reach it.
_calls = itertools.count(random.SystemRandom().randrange(1 << 16))


def free_domain_id(low: int = 1, high: int = 100) -> int:
    """A domain id in ``[low, high]``, restricted to this xdist worker's slice of it; successive
    calls cycle through the slice."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under xdist
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and count > 1:
        index = int(worker[2:])
        size = (high - low + 1) // count
        if size < 1:
            raise RuntimeError(f"{count} test workers cannot share {high - low + 1} DDS domains")
        low = low + index * size
        high = low + size - 1
    return low + next(_calls) % (high - low + 1)
