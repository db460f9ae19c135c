from setuptools import find_packages, setup

package_name = "rqt_sernf_rewards"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml", "plugin.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="SERNF maintainers",
    maintainer_email="maintainers@sernf-ros.org",
    description="Reward labeling for SERNF episodes: rqt plugin and standalone window (sernf-label).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sernf-label = rqt_sernf_rewards.standalone:main",
        ],
    },
)
