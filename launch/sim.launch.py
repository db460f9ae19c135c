"""Simulated SERNF graph: sim robot + policy + learner, parameters from config/sim.yaml.

    ros2 launch sernf sim.launch.py

The graph itself (nodes, parameter files, remappings) is defined once in `sernf.graph`;
`python -m sernf.run_graph sim` starts the same processes where launch_ros is unavailable.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch_ros.actions import Node
from sernf.graph import sim_graph

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    config_dir = Path(get_package_share_directory("sernf")) / "config"
    nodes = []
    for spec in sim_graph():
        nodes.append(Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            parameters=[*(str(path) for path in spec.parameter_paths(config_dir)), spec.extra_parameters],
            remappings=list(spec.remappings),
            output="screen",
        ))
    return LaunchDescription(nodes)
