"""Cross-package test fixtures: isolated ROS 2 domains and process clean-up."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ros_domains import free_domain_id

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ros_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for an isolated ROS graph: unique domain, localhost-only discovery.

    Applied to this process (for in-process rclpy) and returned for subprocesses.
    """
    domain = str(free_domain_id())
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return dict(os.environ)


class ProcessGroup:
    """Starts python processes and guarantees they are gone at the end of the test."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def python(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO_ROOT, start_new_session=True,
        )
        proc.log_path = self.log_dir / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return Path(proc.log_path).read_text()  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def processes(ros_env: dict[str, str], tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(ros_env, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
