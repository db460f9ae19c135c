"""Launch files and parameter files, checked without launch_ros (docs/design.md §3).

The launch files are executed against small stand-ins for `launch` / `launch_ros` that only
record what they are asked to start; every node, executable and parameter file referenced
must exist, and every parameter in config/*.yaml must be declared by the node it is given to.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml
from sernf.graph import SCISSORS_LEARNERS, SCISSORS_MODES, NodeSpec, build_graph

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def _is_ros_params(path: Path) -> bool:
    data = yaml.safe_load(path.read_text())
    return isinstance(data, dict) and all(
        isinstance(v, dict) and "ros__parameters" in v for v in data.values())


PARAMETER_FILES = sorted(p for p in [*(ROOT / "config").glob("*.yaml"), *(ROOT / "config" / "robot").glob("*.yaml")]
                         if _is_ros_params(p))

def _graph_variants() -> list[tuple[str, dict[str, str]]]:
    """(graph, launch arguments) for every shape of every graph."""
    variants: list[tuple[str, dict[str, str]]] = [("sim", {})]
    for mode in SCISSORS_MODES:
        for learner in SCISSORS_LEARNERS:
            for sim in ("false", "true"):
                variants.append(("scissors", {"mode": mode, "learner": learner, "sim": sim}))
    return variants



def _console_scripts(package: str) -> dict[str, str]:
    """`name = module:function` entries of a package's setup.py, read without running it."""
    tree = ast.parse((ROOT / "src" / package / "setup.py").read_text())
    scripts: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    for item in ast.literal_eval(value):
                        name, _, target = (s.strip() for s in item.partition("="))
                        scripts[name] = target
    return scripts


class _Declared:
    """Stand-in for launch.actions.DeclareLaunchArgument."""

    def __init__(self, name: str, default_value: str = "", description: str = "") -> None:
        self.name, self.default_value, self.description = name, default_value, description


class _Opaque:
    """Stand-in for launch.actions.OpaqueFunction."""

    def __init__(self, function) -> None:
        self.function = function


class _Configuration:
    """Stand-in for launch.substitutions.LaunchConfiguration."""

    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context) -> str:
        return context.launch_configurations[self.name]


def _recorded_launch(path: Path, share: Path, arguments: dict[str, str] | None = None) -> list[dict]:
    """Run generate_launch_description() with recording stand-ins for launch / launch_ros;
    OpaqueFunctions are evaluated with the declared arguments' defaults, overridden by
    ``arguments`` (as `ros2 launch <file> name:=value` does)."""
    recorded: list[dict] = []
    fake = {
        "launch": types.SimpleNamespace(LaunchDescription=lambda actions: list(actions)),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=_Declared, OpaqueFunction=_Opaque),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=_Configuration),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": types.SimpleNamespace(Node=lambda **kw: recorded.append(kw) or kw),
        "ament_index_python": types.ModuleType("ament_index_python"),
        "ament_index_python.packages": types.SimpleNamespace(
            get_package_share_directory=lambda name: str(share / name)),
    }
    saved = {name: sys.modules.get(name) for name in fake}
    sys.modules.update(fake)  # type: ignore[arg-type]
    try:
        spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        description = module.generate_launch_description()
        declared = {a.name: a.default_value for a in description if isinstance(a, _Declared)}
        unknown = set(arguments or {}) - set(declared)
        assert not unknown, f"{path.name} declares no argument(s) {sorted(unknown)}"
        context = types.SimpleNamespace(launch_configurations={**declared, **(arguments or {})})
        nodes = []
        for action in description:
            if isinstance(action, _Opaque):
                nodes += action.function(context)
            elif not isinstance(action, _Declared):
                nodes.append(action)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    assert nodes == recorded, "the launch description must contain exactly the nodes built"
    return recorded


#: Parameters every rclpy node declares itself (rclpy.time_source): allowed in any node's section.
ROS_BUILTIN_PARAMETERS = {"use_sim_time"}


def _node_parameters(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    config = getattr(module, "PARAMETERS", None)
    classes = config if isinstance(config, tuple) else (config,)
    assert classes and all(dataclasses.is_dataclass(c) for c in classes), (
        f"{module_name} must define PARAMETERS = <config dataclass> (or a tuple of them)")
    return {f.name for c in classes for f in dataclasses.fields(c)} | ROS_BUILTIN_PARAMETERS


def _launch_cases() -> list[tuple[Path, dict[str, str]]]:
    cases = []
    for path in LAUNCH_FILES:
        graph = path.name.removesuffix(".launch.py")
        shapes = [args for name, args in _graph_variants() if name == graph] or [{}]
        cases += [(path, args) for args in shapes]
    return cases


@pytest.mark.parametrize(("launch_file", "arguments"), _launch_cases(),
                         ids=lambda v: v.name if isinstance(v, Path) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_launch_file_references_exist(launch_file: Path, arguments: dict[str, str], tmp_path: Path):
    # An install tree as the bringup package lays it out: share/sernf/config/*.yaml.
    (tmp_path / "sernf").mkdir()
    (tmp_path / "sernf" / "config").symlink_to(ROOT / "config")
    nodes = _recorded_launch(launch_file, tmp_path, arguments)
    assert nodes, f"{launch_file.name} starts no node"
    for node in nodes:
        package, executable = node["package"], node["executable"]
        assert (ROOT / "src" / package / "package.xml").is_file(), f"no package {package}"
        scripts = _console_scripts(package)
        assert executable in scripts, f"{package} has no executable {executable} ({sorted(scripts)})"
        module = scripts[executable].split(":")[0]
        assert importlib.util.find_spec(module) is not None, f"{module} is not importable"
        files = [p for p in node["parameters"] if isinstance(p, str)]
        assert files, f"node {node['name']} gets no parameter file"
        assert any(node["name"] in (yaml.safe_load(Path(f).read_text()) or {}) for f in files), (
            f"no parameter file of node {node['name']} has a section for it: {files}")
        for parameter_file in files:
            assert Path(parameter_file).is_file(), f"{parameter_file} does not exist"


@pytest.mark.parametrize(("graph", "arguments"), _graph_variants(),
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_graph_nodes_match_their_executables(graph: str, arguments: dict[str, str]):
    for spec in build_graph(graph, arguments):
        assert isinstance(spec, NodeSpec)
        assert _console_scripts(spec.package).get(spec.executable) == f"{spec.module}:main"
        for path in spec.parameter_paths(ROOT / "config"):
            assert path.is_file(), f"{spec.name}: {path} does not exist"


def _nodes_by_name() -> dict[str, str]:
    """Node name -> module, from every graph in every shape (the one source of truth)."""
    return {spec.name: spec.module for graph, arguments in _graph_variants()
            for spec in build_graph(graph, arguments)}


@pytest.mark.parametrize("parameter_file", PARAMETER_FILES, ids=lambda p: p.name)
def test_every_parameter_is_declared_by_its_node(parameter_file: Path):
    modules = _nodes_by_name()
    sections = yaml.safe_load(parameter_file.read_text())
    for node_name, section in sections.items():
        assert node_name in modules, f"{parameter_file.name}: no node named {node_name!r} in any graph"
        given = set(section["ros__parameters"])
        declared = _node_parameters(modules[node_name])
        undeclared = sorted(given - declared)
        assert not undeclared, f"{parameter_file.name}: {node_name} does not declare {undeclared}"


def test_the_check_catches_an_undeclared_parameter(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sim_robot:\n  ros__parameters:\n    no_such_parameter: 1\n")
    with pytest.raises(AssertionError, match="no_such_parameter"):
        test_every_parameter_is_declared_by_its_node(bad)
