from glob import glob

from setuptools import find_packages, setup

package_name = "orca_hand_driver"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/udev", glob("udev/*.rules")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="SERNF maintainers",
    maintainer_email="maintainers@sernf-ros.org",
    description="ORCA hand driver (lifecycle node over dynamixel-sdk), hand models, calibration routine.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "orca_hand_driver = orca_hand_driver.orca_hand_node:main",
            "calibrate = orca_hand_driver.calibrate:main",
        ],
    },
)
