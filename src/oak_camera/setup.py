from glob import glob

from setuptools import find_packages, setup

package_name = "oak_camera"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/udev", glob("udev/*.rules")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="SERNF maintainers",
    maintainer_email="maintainers@sernf-ros.org",
    description="OAK cameras (depthai v3) -> sensor_msgs/Image + CameraInfo (lifecycle node).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "oak_camera = oak_camera.oak_camera_node:main",
            "list_devices = oak_camera.list_devices:main",
            "record = oak_camera.record:main",
        ],
    },
)
