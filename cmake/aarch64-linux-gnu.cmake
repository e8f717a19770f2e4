# CMake toolchain file: cross-compile kerf's runtime (-DKERF_RUNTIME_ONLY=ON) for 64-bit Arm Linux
# with Debian 12's g++-aarch64-linux-gnu (target libraries in /usr/aarch64-linux-gnu).
#
#   cmake -S . -B build-aarch64 -DKERF_RUNTIME_ONLY=ON \
#         -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#
# The binaries run on an arm64 machine, or here under qemu-user-static:
#   qemu-aarch64-static -L /usr/aarch64-linux-gnu -cpu max build-aarch64/kerf_runtime_tests
# (scripts/test-aarch64.sh does both).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(KERF_CROSS_TRIPLE aarch64-linux-gnu)
find_program(KERF_CROSS_CXX ${KERF_CROSS_TRIPLE}-g++)
find_program(KERF_CROSS_CC ${KERF_CROSS_TRIPLE}-gcc)
if(NOT KERF_CROSS_CXX OR NOT KERF_CROSS_CC)
  message(FATAL_ERROR "${KERF_CROSS_TRIPLE}-g++ / -gcc not found: apt-get install g++-aarch64-linux-gnu")
endif()
set(CMAKE_C_COMPILER ${KERF_CROSS_CC})
set(CMAKE_CXX_COMPILER ${KERF_CROSS_CXX})

# Libraries and headers of the target come only from the Debian multiarch-cross sysroot; programs
# (ccache, sh) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/${KERF_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Catch2 2 (Debian package catch2) is header-only: its headers are in /usr/include/catch2, which the
# cross compiler already searches (last, after the aarch64 headers), and its CMake config is in
# /usr/lib/cmake/Catch2, outside the sysroot. Point find_package(Catch2) at it; the test binary uses
# only the header-only target Catch2::Catch2, never the x86 libCatch2WithMain.a.
if(NOT DEFINED Catch2_DIR AND EXISTS /usr/lib/cmake/Catch2/Catch2Config.cmake)
  set(Catch2_DIR /usr/lib/cmake/Catch2 CACHE PATH "Catch2 2 CMake config (header-only)")
endif()

# Run the cross-built binaries under qemu (used by CMake for try_run and by add_test/ctest).
find_program(KERF_QEMU_AARCH64 qemu-aarch64-static)
if(KERF_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${KERF_QEMU_AARCH64} -L /usr/${KERF_CROSS_TRIPLE} -cpu max)
endif()
