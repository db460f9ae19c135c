#!/usr/bin/env bash
# One set-up path for every Makefile target (and for people): on a fresh Debian 12 machine it
#   1. installs the few Debian packages we need (offscreen GL for MuJoCo, a C++ toolchain),
#   2. creates .venv and installs the pinned Python dependencies (requirements/),
#   3. rewrites the message wheels' CMake include paths to this interpreter (docs/design.md §3),
#   4. builds the colcon workspace into install/ (symlinked Python, so edits need no rebuild).
# Each step is skipped when its inputs did not change, so re-running it takes about a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${SERNF_PYTHON:-python3}"
log() { printf '[bootstrap] %s\n' "$*"; }

# --- 1. Debian packages -----------------------------------------------------------------------
# EGL + Mesa: MuJoCo offscreen rendering (MUJOCO_GL=egl, set by env.sh); cmake/g++: rosidl;
# xkbcommon/fontconfig/dbus: Qt's offscreen platform (the reward-labeling window and its tests).
APT_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 libgl1 cmake g++ python3-venv
  libxkbcommon0 libfontconfig1 libdbus-1-3)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "WARNING: missing Debian packages (${missing[*]}); install them with apt-get as root"
  fi
fi

# --- 2. Python environment -----------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
req_hash=$(cat requirements/requirements.txt requirements/constraints.txt | sha256sum | cut -c1-16)
if [[ "$(cat "$VENV/.sernf-requirements" 2>/dev/null)" != "$req_hash" ]]; then
  log "installing pinned Python dependencies (first time: several GB for torch; minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=24"
  "$VENV/bin/python" -m pip install -q -r requirements/requirements.txt -c requirements/constraints.txt
  # 3. The msgs wheels' CMake exports carry the wheel builder's Python/numpy include dirs;
  # point them at this interpreter or rosidl builds of our interfaces fail to find Python.h.
  "$VENV/bin/python" tools/fix_ros_cmake_paths.py "$VENV"
  echo "$req_hash" > "$VENV/.sernf-requirements"
fi

# --- 4. colcon workspace --------------------------------------------------------------------------
# Rebuild only when a package's build description changed: Python sources are symlinked
# (--symlink-install) and message definitions are part of the hash.
build_hash=$(find src -maxdepth 3 \( -name package.xml -o -name setup.py -o -name setup.cfg \
  -o -name CMakeLists.txt -o -name '*.msg' -o -name '*.srv' \) -print0 | sort -z \
  | xargs -0 sha256sum | sha256sum | cut -c1-16)
launch_hash=$( (ls launch config 2>/dev/null || true) | sha256sum | cut -c1-16)
if [[ "$(cat install/.sernf-build 2>/dev/null)" != "$build_hash-$launch_hash" ]]; then
  log "building the colcon workspace"
  mkdir -p log
  (
    export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    "$VENV/bin/colcon" --log-base log build --symlink-install --event-handlers console_cohesion- \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF -Wno-dev \
      > log/colcon-build.txt 2>&1 || { tail -40 log/colcon-build.txt; exit 1; }
  )
  echo "$build_hash-$launch_hash" > install/.sernf-build
fi

# --- 4b. test-only vendor interfaces -------------------------------------------------------------
# tools/test_interfaces/<pkg> stand in for vendor interface packages that have no wheel (Franka's
# franka_msgs, for the error-recovery action). Their COLCON_IGNORE keeps them out of step 4 and of
# any robot PC's build; here a copy without it is built into install/ -- unless the environment
# already provides the package (a robot PC with franka_ros2 sourced), which must never be overlaid.
vendor_package_found() {
  local IFS=: prefix
  for prefix in ${AMENT_PREFIX_PATH:-}; do
    [[ "$prefix" == "$ROOT/install"* ]] && continue
    [[ -e "$prefix/share/ament_index/resource_index/packages/$1" ]] && return 0
  done
  return 1
}
for pkg_dir in tools/test_interfaces/*/; do
  pkg=$(basename "$pkg_dir")
  if vendor_package_found "$pkg"; then
    if [[ -e "install/$pkg/.sernf-test-interface" ]]; then
      log "the environment provides $pkg: removing the test-only copy from install/"
      rm -rf "install/$pkg" "install/.sernf-test-$pkg"
    fi
    continue
  fi
  pkg_hash=$(find "$pkg_dir" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  if [[ "$(cat "install/.sernf-test-$pkg" 2>/dev/null)" != "$pkg_hash" ]]; then
    log "building the test-only interface package $pkg"
    staging="build/.test_interfaces/$pkg"  # under build/, which colcon's discovery skips
    rm -rf "$staging" && mkdir -p "$(dirname "$staging")" log && cp -r "$pkg_dir" "$staging"
    rm -f "$staging/COLCON_IGNORE"
    (
      export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
      "$VENV/bin/colcon" --log-base log build --paths "$staging" --event-handlers console_cohesion- \
        --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF -Wno-dev \
        > "log/colcon-build-$pkg.txt" 2>&1 || { tail -40 "log/colcon-build-$pkg.txt"; exit 1; }
    )
    touch "install/$pkg/.sernf-test-interface"
    echo "$pkg_hash" > "install/.sernf-test-$pkg"
  fi
done
# --- 5. user commands on PATH ---------------------------------------------------------------------
# colcon installs console scripts under install/<pkg>/lib/<pkg>/ (where `ros2 run` looks); link
# the user-facing ones (sernf-*) into install/bin, which env.sh puts on PATH.
mkdir -p install/bin
find install/bin -maxdepth 1 -type l -delete
for script in install/*/lib/*/sernf-*; do
  [[ -x "$script" ]] && ln -sf "$ROOT/$script" "install/bin/$(basename "$script")"
done
log "ready (source ./env.sh for a shell)"
