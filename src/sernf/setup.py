from glob import glob

from setuptools import find_packages, setup

package_name = "sernf"

# launch/ and config/ are symlinks to the workspace's top-level folders, so that
# `ros2 launch sernf <file>` and `get_package_share_directory("sernf")/config` resolve on a
# ROS install while the files themselves live where users look for them.
setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", sorted(glob("launch/*.launch.py"))),
        ("share/" + package_name + "/config", sorted(glob("config/*.yaml"))),
        ("share/" + package_name + "/config/robot", sorted(glob("config/robot/*.yaml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="SERNF maintainers",
    maintainer_email="maintainers@sernf-ros.org",
    description="SERNF bringup: launch files and parameter files for the simulated and real graphs.",
    license="Apache-2.0",
    entry_points={"console_scripts": [
        "lifecycle_manager = sernf.lifecycle_manager_node:main",
    ]},
)
