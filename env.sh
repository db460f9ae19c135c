# Source this file (`source env.sh`) for a shell with the SERNF workspace: the virtual
# environment, the colcon overlay (our messages and packages) and an isolated ROS domain.
# Run `make setup` once first.
_sernf_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
if [[ ! -f "$_sernf_root/install/setup.bash" ]]; then
  echo "sernf: workspace not built; run 'make setup' in $_sernf_root first" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "$_sernf_root/.venv/bin/activate"
# shellcheck disable=SC1091
source "$_sernf_root/install/setup.bash"
# User commands (sernf-train, ...): linked into install/bin by tools/bootstrap.sh.
export PATH="$_sernf_root/install/bin:$PATH"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# These wheels ignore ROS_LOCALHOST_ONLY (DESIGN §3); keep discovery on this machine unless the
# user asks otherwise (set ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET to talk to a robot PC).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export SERNF_ROOT="$_sernf_root"
unset _sernf_root
