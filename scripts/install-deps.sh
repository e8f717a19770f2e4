#!/usr/bin/env bash
# Installs kerf's build and test dependencies from Debian 12's packages (run as root, or with sudo).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ccache git \
  libtorch-dev libopenblas0-openmp \
  libonnx-dev libprotobuf-dev protobuf-compiler libgloo-dev \
  libeigen3-dev libcli11-dev catch2 nlohmann-json3-dev libyaml-cpp-dev \
  libbenchmark-dev libssl-dev g++-aarch64-linux-gnu qemu-user-static chromium \
  clang libclang-rt-14-dev \
  opencl-c-headers ocl-icd-opencl-dev pocl-opencl-icd clinfo \
  python3-jsonschema \
  >/dev/null
echo "kerf dependencies installed"
