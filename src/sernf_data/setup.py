from setuptools import find_packages, setup

package_name = "sernf_data"

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
    description="SERNF data layer: zarr episode store, observation spec, dataset operations, rosbag2 conversion.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sernf-data = sernf_data.cli:main",
            "sernf-bag2zarr = sernf_data.bag2zarr:main",
            "sernf-record = sernf_data.record:main",
            "recorder = sernf_data.episode_bag_recorder_node:main",
        ],
    },
)
