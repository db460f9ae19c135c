#!/usr/bin/env bash
# Create the SROS2 keystore and one enclave per SERNF node from config/security/sernf_policy.xml.
# Run on the robot PC with a full ROS 2 install (apt: ros-kilted-sros2, ros-kilted-rmw-fastrtps-cpp
# built with DDS-Security, which the apt packages are). The PyPI wheels used for development lack
# the security plugins (docs/security.md shows the error); this script refuses to run there.
#
#   tools/sros2_keystore.sh /etc/sernf/sros2_keystore
#   export ROS_SECURITY_KEYSTORE=/etc/sernf/sros2_keystore ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce
#   ros2 run sernf_learner learner_node --ros-args --enclave /sernf/learner ...
set -euo pipefail
keystore=${1:?usage: $0 <keystore directory>}
policy=$(cd "$(dirname "$0")/.." && pwd)/config/security/sernf_policy.xml
command -v ros2 >/dev/null || { echo "ros2 CLI not found: install ros-kilted-sros2 (apt) and source /opt/ros/kilted/setup.bash" >&2; exit 1; }
ros2 security --help >/dev/null 2>&1 || { echo "ros2 security not available: apt install ros-kilted-sros2" >&2; exit 1; }
umask 077   # private keys readable by the owner only
[ -d "$keystore" ] || ros2 security create_keystore "$keystore"
for enclave in $(grep -o 'enclave path="[^"]*"' "$policy" | cut -d'"' -f2); do
  [ -d "$keystore/enclaves$enclave" ] || ros2 security create_enclave "$keystore" "$enclave"
  ros2 security create_permission "$keystore" "$enclave" "$policy"
  echo "enclave $enclave: $keystore/enclaves$enclave"
done
echo "done. Copy each enclave's directory only to the machine that runs that node; keep $keystore/private offline."
