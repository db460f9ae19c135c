from setuptools import find_packages, setup

package_name = "franka_bridge"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="SERNF maintainers",
    maintainer_email="maintainers@sernf-ros.org",
    description="Relative end-effector commands to Franka Cartesian impedance equilibrium poses (lifecycle node).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "franka_bridge = franka_bridge.franka_bridge_node:main",
            "robot_mode_relay = franka_bridge.robot_mode_relay_node:main",
        ],
    },
)
