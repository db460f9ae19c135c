from setuptools import find_packages, setup

package_name = "sernf_sim"

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
    description="SERNF simulated tasks (point task, MuJoCo dexterous hand), scripted experts, evaluation; sim_robot_node; sim_world (the simulated world behind the real drivers).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sim_robot_node = sernf_sim.sim_robot_node:main",
            "sim_studio_live = sernf_sim.studio_live_sender:main",
            "sim_arm_node = sernf_sim.sim_arm_node:main",
            "sim_world = sernf_sim.sim_world_node:main",
        ],
    },
)
