from setuptools import find_packages, setup

package_name = "sernf_ros"

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
    description="ROS plumbing shared by every SERNF node: parameters from config dataclasses, process main, diagnostics, stamps.",
    license="Apache-2.0",
)
