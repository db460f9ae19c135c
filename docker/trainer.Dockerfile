# Training-server image: the learner only (CUDA PyTorch from PyPI, ROS 2 from PyPI wheels),
# built exactly the way `make setup` builds a developer machine (Debian 12, Python 3.11, the
# lock file), so the server runs what CI tests. Build from the repository root:
#
#   docker build -f docker/trainer.Dockerfile -t sernf-trainer .
#   docker run --rm -it --gpus all --net=host -v /data/sernf:/data sernf-trainer \
#       python -m sernf_learner.learner_node --ros-args --params-file /data/learner.yaml
#
# The robot PC and the server share the replay and checkpoint locations (a shared path or an
# fsspec URL) and one ROS domain (ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET).
FROM python:3.11-slim-bookworm

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates make \
        libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 libgl1 cmake g++ python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /ws
COPY . .
# tools/bootstrap.sh: .venv with the pinned stack (requirements/ + the lock) and the colcon
# build; the same script CI runs.
RUN SERNF_PYTHON=python3.11 bash tools/bootstrap.sh && rm -rf /root/.cache/pip
ENV ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET \
    MUJOCO_GL=egl \
    PATH=/ws/.venv/bin:/ws/install/bin:$PATH
ENTRYPOINT ["/bin/bash", "-c", "source /ws/env.sh && exec \"$@\"", "--"]
CMD ["bash"]
