"""The SERNF node graphs: which nodes run, with which parameter files and remappings.

This module is the single source of truth for a graph. `launch/*.launch.py` turns it into
`launch_ros` Node actions on a full ROS 2 install; `sernf.run_graph` starts the very same
processes on machines without `launch_ros` (PyPI-wheel ROS, CI). Neither keeps its own copy
of node names, executables, parameter files or remappings. Pure Python: no ROS imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Top-level config/ folder in a source checkout; on an install it is share/sernf/config
# (the bringup package installs it there), found through ament_index by the launch file.
SOURCE_CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"


@dataclass(frozen=True)
class NodeSpec:
    """One node process of a graph."""

    package: str
    """ROS package that installs the executable."""
    executable: str
    """Console script name (`ros2 run <package> <executable>`)."""
    module: str
    """Python module whose `main()` is that executable (used where `ros2 run` is missing)."""
    name: str
    """Node name; also the key under which its parameters sit in the parameter file."""
    parameters_file: str
    """Parameter file name inside config/ (`<node name>: ros__parameters: ...`)."""
    remappings: tuple[tuple[str, str], ...] = ()
    """Topic remappings (from, to)."""
    extra_parameters: dict[str, object] = field(default_factory=dict)
    """Parameters that override the file (set by the caller, e.g. a run directory)."""

    def __post_init__(self) -> None:
        for attribute in ("package", "executable", "module", "name", "parameters_file"):
            if not getattr(self, attribute):
                raise ValueError(f"NodeSpec.{attribute} must not be empty")
        if not self.parameters_file.endswith(".yaml"):
            raise ValueError(f"parameters_file must be a .yaml file, got {self.parameters_file!r}")

    def ros_args(self, config_dir: Path) -> list[str]:
        """`--ros-args` for starting this node as a plain process."""
        args = ["--ros-args", "-r", f"__node:={self.name}",
                "--params-file", str(config_dir / self.parameters_file)]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        for key, value in self.extra_parameters.items():
            args += ["-p", f"{key}:={_param_literal(value)}"]
        return args


def _param_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sim_graph(extra_parameters: dict[str, dict[str, object]] | None = None) -> list[NodeSpec]:
    """The simulated robot, the policy and the learner (config/sim.yaml).

    `extra_parameters` maps a node name to parameter overrides (e.g. run directories).
    """
    extra = extra_parameters or {}
    specs = [
        NodeSpec(package="sernf_sim", executable="sim_robot_node",
                 module="sernf_sim.sim_robot_node", name="sim_robot",
                 parameters_file="sim.yaml", extra_parameters=extra.get("sim_robot", {})),
        NodeSpec(package="sernf_policy", executable="policy_node",
                 module="sernf_policy.policy_node", name="policy",
                 parameters_file="sim.yaml", extra_parameters=extra.get("policy", {})),
        NodeSpec(package="sernf_learner", executable="learner_node",
                 module="sernf_learner.learner_node", name="learner",
                 parameters_file="sim.yaml", extra_parameters=extra.get("learner", {})),
    ]
    unknown = set(extra) - {spec.name for spec in specs}
    if unknown:
        raise ValueError(f"overrides for nodes not in the sim graph: {sorted(unknown)}")
    return specs


def missing_inputs(specs: list[NodeSpec], config_dir: Path, cwd: Path | None = None) -> list[str]:
    """Local files a graph's learner needs before it can start (the offline stages' policy and
    demonstrations), each as 'parameter = path', for those that do not exist. URLs are not
    checked here (the learner validates them itself)."""
    import yaml

    cwd = cwd or Path.cwd()
    missing = []
    for spec in specs:
        if spec.module != "sernf_learner.learner_node":
            continue
        with open(config_dir / spec.parameters_file, encoding="utf-8") as fh:
            params = dict(((yaml.safe_load(fh) or {}).get(spec.name) or {}).get("ros__parameters") or {})
        params.update(spec.extra_parameters)
        for key in ("initial_checkpoint", "offline_store_uri"):
            value = str(params.get(key) or "")
            if value and "://" not in value and not (cwd / value).exists():
                missing.append(f"{spec.name}.{key} = {value}")
    return missing


GRAPHS = {"sim": sim_graph}
"""Graph name → builder, for `python -m sernf.run_graph <name>`."""
