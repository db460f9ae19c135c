# Robot PC image: a full ROS 2 Kilted install from apt (ros2 CLI, launch_ros, rosbag2 with MCAP,
# rqt, cv_bridge, sros2) plus this workspace, depthai for the OAK cameras and the udev rule for
# the ORCA hand's USB serial adapter. Build from the repository root:
#
#   docker build -f docker/robot.Dockerfile -t sernf-robot .
#   docker run --rm -it --net=host --ipc=host --privileged -v /dev:/dev sernf-robot \
#       ros2 launch sernf sim.launch.py
#
# ROS and numpy come from apt: cv_bridge is compiled against the distribution's numpy, so pip
# must never replace it. The lock file (requirements/constraints.txt) pins everything else.
FROM ros:kilted-ros-base

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-pip python3-venv python3-numpy udev \
        libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 libgl1 \
        ros-kilted-rosbag2 ros-kilted-rosbag2-storage-mcap ros-kilted-rqt ros-kilted-rqt-gui-py \
        ros-kilted-cv-bridge ros-kilted-sros2 ros-kilted-diagnostic-msgs \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /ws
COPY requirements/ requirements/
# The Python stack from PyPI, pinned by the lock, without the ROS wheels (apt provides ROS) and
# without numpy: the constraint below holds numpy at the distribution's version, so an
# incompatible pin fails the build instead of silently replacing it.
RUN grep -v -e '^ros-kilted-' -e '^colcon-' -e '^numpy==' requirements/requirements.txt > /tmp/req.txt \
    && grep -v -e '^ros-kilted-' -e '^colcon-' -e '^numpy==' requirements/constraints.txt > /tmp/lock.txt \
    && python3 -c 'import numpy; print(f"numpy=={numpy.__version__}")' >> /tmp/lock.txt \
    && pip3 install --break-system-packages --no-cache-dir -r /tmp/req.txt -c /tmp/lock.txt

COPY src/orca_hand_driver/udev/99-orca-hand.rules src/oak_camera/udev/80-oak-camera.rules /etc/udev/rules.d/
COPY . .
RUN source /opt/ros/kilted/setup.bash && colcon build --symlink-install
ENV MUJOCO_GL=egl
ENTRYPOINT ["/bin/bash", "-c", "source /opt/ros/kilted/setup.bash && source /ws/install/setup.bash && exec \"$@\"", "--"]
CMD ["bash"]
