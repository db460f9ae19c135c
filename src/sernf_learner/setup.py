from setuptools import find_packages, setup

package_name = "sernf_learner"

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
    description="SERNF algorithm: the four training stages and distillation, trainer and CLIs; learner_node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sernf-train=sernf_learner.cli:main",
            "learner_node = sernf_learner.learner_node:main",
        ],
    },
)
