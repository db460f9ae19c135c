"""Start a SERNF node graph as plain processes — `ros2 launch` for machines without launch_ros.

    python -m sernf.run_graph sim [--config-dir DIR] [--set node.param=value ...]
    python -m sernf.run_graph scissors [mode:=rollout|teleop] [learner:=local|remote|none]
                                       [sim:=true|false] [checkpoint:=DIR] [params_file:=FILE] ...

Reads the graph from `sernf.graph` (the same description the launch files use; `name:=value`
are the launch file's arguments), starts one process per node with `--ros-args` (node name,
parameter files, remappings), forwards its output with a `[node]` prefix, and on Ctrl-C /
SIGTERM or when any node exits, stops all of them (SIGINT, then SIGTERM, then SIGKILL): the
lifecycle manager first, so that it deactivates the drivers while they still run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from sernf.graph import (
    GRAPH_ARGUMENTS,
    GRAPHS,
    SOURCE_CONFIG_DIR,
    NodeSpec,
    build_graph,
    missing_inputs,
    parse_bool,
)

#: Nodes stopped before the others: the lifecycle manager deactivates the drivers on its way out.
STOP_FIRST_MODULES = frozenset({"sernf.lifecycle_manager_node"})


class GraphProcesses:
    """The running processes of a graph; a context manager that always stops them."""

    def __init__(self, specs: Sequence[NodeSpec], config_dir: Path, env: dict[str, str] | None = None,
                 log_dir: Path | None = None):
        self.specs = list(specs)
        self.config_dir = config_dir
        self.env = dict(os.environ if env is None else env)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> GraphProcesses:
        for spec in self.specs:
            self.start_node(spec.name)
        return self

    def start_node(self, name: str) -> subprocess.Popen:
        """Start (or restart, after it exited) the graph's node ``name``."""
        spec = next((s for s in self.specs if s.name == name), None)
        if spec is None:
            raise KeyError(f"no node {name!r} in this graph ({[s.name for s in self.specs]})")
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"node {name!r} is still running")
        for parameters in spec.parameter_paths(self.config_dir):
            if not parameters.is_file():
                raise FileNotFoundError(f"parameter file of node {spec.name!r} not found: {parameters}")
        cmd = [sys.executable, "-m", spec.module, *spec.ros_args(self.config_dir)]
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.procs[name] = proc
        thread = threading.Thread(target=self._pump, args=(name, proc), daemon=True)
        thread.start()
        self._threads.append(thread)
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to node ``name``'s process group and wait for it to exit (fault tests)."""
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        # One log file per node when asked (tests read them; appended across restarts), and
        # prefixed lines on stdout.
        sink = open(self.log_dir / f"{name}.log", "a") if self.log_dir else None  # noqa: SIM115
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                if sink:
                    sink.write(line)
                    sink.flush()
                else:
                    sys.stdout.write(f"[{name}] {line}")
        finally:
            if sink:
                sink.close()

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node: first the lifecycle managers (they deactivate the drivers, which then
        hold, while those are still running), then all the others."""
        first = {spec.name for spec in self.specs if spec.module in STOP_FIRST_MODULES}
        self._stop([p for name, p in self.procs.items() if name in first], timeout)
        self._stop(list(self.procs.values()), timeout)
        for thread in self._threads:
            thread.join(timeout=2.0)

    @staticmethod
    def _stop(procs: list[subprocess.Popen], timeout: float) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in procs if p.poll() is None]
            if not alive:
                break
            for proc in alive:
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(p.poll() is None for p in alive):
                time.sleep(0.05)

    def __enter__(self) -> GraphProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, object]]:
    """`--set node.param=value` items → {node: {param: value}}; values are read as YAML, as
    `-p param:=value` reads them (10.0 is a float, true a bool, [a, b] a list)."""
    overrides: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot or not node or not param:
            raise ValueError(f"--set expects node.param=value, got {item!r}")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        overrides.setdefault(node, {})[param] = value if parsed is None else parsed
    return overrides


def parse_launch_arguments(items: Sequence[str]) -> dict[str, str]:
    """Launch-style `name:=value` arguments (as `ros2 launch` takes them) → {name: value}."""
    arguments: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"graph arguments are name:=value, got {item!r}")
        if name in arguments:
            raise ValueError(f"argument {name!r} given twice")
        arguments[name] = value
    return arguments


def _missing_inputs_hint(graph: str, arguments: dict[str, str] | None = None) -> str:
    arguments = arguments or {}
    if graph == "scissors" and parse_bool(arguments.get("sim", "false"), "sim"):
        return ("Record the simulated demonstrations and train the CPU-sized checkpoint first "
                "(about 20 min on 2 CPU cores):\n"
                "  make scissors-sim-data    # = python -m sernf.scissors_sim_data --out results/scissors_sim\n"
                "or bring your own (sernf-train on demonstrations in this graph's layout) with checkpoint:=DIR, "
                "--set learner.initial_checkpoint=... --set learner.offline_store_uri=...; learner:=none "
                "--set policy.checkpoint= starts the world and the drivers without a model.")
    if graph == "sim":
        return ("Record the demonstrations and run the offline stages first (about 15 min on 2 CPU cores):\n"
                "  make sim-data    # = python -m sernf.demo --config config/demo_hand.yaml --out results/sim "
                "--offline-only\n"
                "or point the learner at your own with --set learner.initial_checkpoint=... "
                "--set learner.offline_store_uri=...")
    return ("Record demonstrations (mode:=teleop), convert them (sernf-bag2zarr) and run the offline "
            "stages (sernf-train) first, then point the graph at the results: checkpoint:=DIR, "
            "--set learner.initial_checkpoint=... --set learner.offline_store_uri=..., or your own "
            "params_file:=FILE; learner:=remote or learner:=none start no learner here.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", choices=sorted(GRAPHS), help="which graph to start")
    parser.add_argument("arguments", nargs="*", metavar="NAME:=VALUE",
                        help="the graph's launch arguments (scissors: "
                             + ", ".join(f"{k}:={d or '...'}" for k, (d, _) in GRAPH_ARGUMENTS["scissors"].items())
                             + ")")
    parser.add_argument("--config-dir", type=Path, default=SOURCE_CONFIG_DIR,
                        help="folder with the parameter files (default: the workspace config/)")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                        help="override one parameter of one node (repeatable)")
    args = parser.parse_args(argv)
    try:
        arguments = parse_launch_arguments(args.arguments)
        specs = build_graph(args.graph, arguments, parse_overrides(args.set))
    except ValueError as exc:
        parser.error(str(exc))
    missing = missing_inputs(specs, args.config_dir)
    if missing:
        print("error: the graph's inputs do not exist yet:\n  " + "\n  ".join(missing) + "\n"
              + _missing_inputs_hint(args.graph, arguments), file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with GraphProcesses(specs, args.config_dir) as graph:
        print(f"[run_graph] started {', '.join(graph.procs)} (Ctrl-C stops all)", flush=True)
        while not stop.is_set():
            exited = graph.exited()
            if exited:
                print(f"[run_graph] node(s) exited: {exited}; stopping the graph", flush=True)
                return 1
            stop.wait(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
