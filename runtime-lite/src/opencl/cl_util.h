// Small OpenCL helpers of the GPU backend: error names, info strings, an owning cl_mem handle.
// Private header (runtime-lite/src/opencl/); no exceptions.
#pragma once

#include <CL/cl.h>

#include <cstddef>
#include <string>
#include <utility>

namespace kerf::rt::gpu {

/// The name of an OpenCL status ("CL_OUT_OF_RESOURCES"), or "CL error <n>" for an unknown one.
const char* cl_error_name(cl_int e);

/// "call: CL_NAME" for messages.
std::string cl_fail(const char* call, cl_int e);

/// A string property of a platform / device (trailing NULs and spaces removed; "" on failure).
std::string platform_string(cl_platform_id p, cl_platform_info what);
std::string device_string(cl_device_id d, cl_device_info what);

/// An owned buffer (released on destruction; OpenCL keeps it alive for commands already enqueued).
struct Mem {
  cl_mem m = nullptr;
  size_t bytes = 0;
  Mem() = default;
  Mem(const Mem&) = delete;
  Mem& operator=(const Mem&) = delete;
  Mem(Mem&& o) noexcept : m(o.m), bytes(o.bytes) {
    o.m = nullptr;
    o.bytes = 0;
  }
  Mem& operator=(Mem&& o) noexcept {
    if (this != &o) {
      reset();
      m = o.m;
      bytes = o.bytes;
      o.m = nullptr;
      o.bytes = 0;
    }
    return *this;
  }
  ~Mem() { reset(); }
  void reset() {
    if (m) clReleaseMemObject(m);
    m = nullptr;
    bytes = 0;
  }
};

}  // namespace kerf::rt::gpu
