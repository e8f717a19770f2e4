// GPU backend stub: this runtime-lite was built without OpenCL (KERF_OPENCL=OFF, or the OpenCL headers /
// ICD loader were not found). A program with GPU-placed ops then fails to create a session, with this
// message: there is no silent fallback to the CPU.
#include "backend.h"

namespace kerf::rt {

std::unique_ptr<DeviceBackend> make_gpu_backend(std::string* err) {
  if (err) *err = "this runtime-lite was built without OpenCL (KERF_OPENCL=OFF or OpenCL not found at build time)";
  return nullptr;
}

}  // namespace kerf::rt
