// The OpenCL GPU backend (backend.h): device selection, weights kept packed on the device and
// dequantized in the kernels (kernels_cl.h), f32 activations and KV caches on the device, one
// in-order command queue with non-blocking kernel enqueues (uploads and downloads block).
//
// Device memory of a session: the payloads of the weights its GPU-placed ops read (as in the file),
// f32 copies of their RMSNorm weights, a RoPE table per (head_dim, theta) for n_ctx positions, the
// KV caches of its Attention ops (n_ctx positions, f32), and activation buffers. Activations share
// buffers like the CPU's slots: every value a GPU-placed op reads or writes gets a slot for its
// lifetime in program order (from the op that defines it to its last reader, the program output to
// the end), values whose lifetimes do not overlap share one; a slot's buffer grows to the T of the
// evaluation when a value is written into it (upload or run), so short evaluations stay small.
#include <CL/cl.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "backend.h"
#include "cl_util.h"
#include "kernels.h"
#include "kernels_cl.h"
#include "model.h"
#include "util.h"

namespace kerf::rt {
namespace {

using fmt::DType;
using fmt::OpCode;
using gpu::cl_error_name;
using gpu::cl_fail;
using gpu::Mem;

uint64_t now_ns() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

/// KERF status of an OpenCL failure: the allocation failures are KERF_ERR_MEMORY, anything else a
/// device that cannot do what was asked.
int status_of(cl_int rc) {
  return rc == CL_MEM_OBJECT_ALLOCATION_FAILURE || rc == CL_OUT_OF_RESOURCES || rc == CL_OUT_OF_HOST_MEMORY
             ? KERF_ERR_MEMORY
             : KERF_ERR_UNSUPPORTED;
}

const char* type_name(cl_device_type t) {
  if (t & CL_DEVICE_TYPE_GPU) return "GPU";
  if (t & CL_DEVICE_TYPE_CPU) return "CPU";
  if (t & CL_DEVICE_TYPE_ACCELERATOR) return "ACCELERATOR";
  return "OTHER";
}

// ---------------------------------------------------------------- device selection

struct DevEntry {
  cl_platform_id platform = nullptr;
  cl_device_id device = nullptr;
  unsigned pi = 0, di = 0;
  cl_device_type type = 0;
  std::string name;
};

int list_devices(std::vector<DevEntry>* out, std::string* err) {
  cl_uint np = 0;
  cl_int rc = clGetPlatformIDs(0, nullptr, &np);
  if (rc == -1001 /* CL_PLATFORM_NOT_FOUND_KHR */ || (rc == CL_SUCCESS && np == 0)) {
    *err = "no OpenCL platform found (the ICD loader lists none; install an OpenCL driver: the GPU vendor's, "
           "or PoCL on the CPU, apt install pocl-opencl-icd)";
    return KERF_ERR_UNSUPPORTED;
  }
  if (rc != CL_SUCCESS) {
    *err = cl_fail("clGetPlatformIDs", rc);
    return KERF_ERR_UNSUPPORTED;
  }
  std::vector<cl_platform_id> ps(np);
  if ((rc = clGetPlatformIDs(np, ps.data(), nullptr)) != CL_SUCCESS) {
    *err = cl_fail("clGetPlatformIDs", rc);
    return KERF_ERR_UNSUPPORTED;
  }
  for (unsigned pi = 0; pi < np; ++pi) {
    cl_uint nd = 0;
    rc = clGetDeviceIDs(ps[pi], CL_DEVICE_TYPE_ALL, 0, nullptr, &nd);
    if (rc == CL_DEVICE_NOT_FOUND || nd == 0) continue;
    if (rc != CL_SUCCESS) {
      *err = cl_fail("clGetDeviceIDs", rc);
      return KERF_ERR_UNSUPPORTED;
    }
    std::vector<cl_device_id> ds(nd);
    if ((rc = clGetDeviceIDs(ps[pi], CL_DEVICE_TYPE_ALL, nd, ds.data(), nullptr)) != CL_SUCCESS) {
      *err = cl_fail("clGetDeviceIDs", rc);
      return KERF_ERR_UNSUPPORTED;
    }
    for (unsigned di = 0; di < nd; ++di) {
      DevEntry e;
      e.platform = ps[pi];
      e.device = ds[di];
      e.pi = pi;
      e.di = di;
      if ((rc = clGetDeviceInfo(ds[di], CL_DEVICE_TYPE, sizeof e.type, &e.type, nullptr)) != CL_SUCCESS) {
        *err = cl_fail("clGetDeviceInfo(CL_DEVICE_TYPE)", rc);
        return KERF_ERR_UNSUPPORTED;
      }
      e.name = gpu::device_string(ds[di], CL_DEVICE_NAME);
      out->push_back(e);
    }
  }
  if (out->empty()) {
    *err = strf("no OpenCL device on the %u platform(s) found", unsigned(np));
    return KERF_ERR_UNSUPPORTED;
  }
  return KERF_OK;
}

std::string device_list(const std::vector<DevEntry>& ds) {
  std::string s;
  for (const DevEntry& e : ds) {
    if (!s.empty()) s += ", ";
    s += strf("%u:%u %s (%s)", e.pi, e.di, e.name.c_str(), type_name(e.type));
  }
  return s;
}

bool contains_nocase(const std::string& hay, const std::string& needle) {
  auto lower = [](std::string x) {
    for (char& c : x) c = char(std::tolower(static_cast<unsigned char>(c)));
    return x;
  };
  return lower(hay).find(lower(needle)) != std::string::npos;
}

/// KERF_OPENCL_DEVICE ("P:D" or a name substring), else the first GPU, else the first device.
int select_device(DevEntry* out, std::string* err) {
  std::vector<DevEntry> ds;
  if (const int rc = list_devices(&ds, err); rc != KERF_OK) return rc;
  const char* env = std::getenv("KERF_OPENCL_DEVICE");
  if (env && *env) {
    const std::string want = env;
    unsigned p = 0, d = 0;
    char tail = 0;
    if (std::sscanf(env, "%u:%u%c", &p, &d, &tail) == 2 && std::isdigit(static_cast<unsigned char>(env[0]))) {
      for (const DevEntry& e : ds)
        if (e.pi == p && e.di == d) {
          *out = e;
          return KERF_OK;
        }
      *err = strf("KERF_OPENCL_DEVICE=\"%s\": no device %u of platform %u (devices: %s)", env, d, p,
                  device_list(ds).c_str());
      return KERF_ERR_UNSUPPORTED;
    }
    for (const DevEntry& e : ds)
      if (contains_nocase(e.name, want)) {
        *out = e;
        return KERF_OK;
      }
    *err = strf("KERF_OPENCL_DEVICE=\"%s\" names no OpenCL device (give \"PLATFORM:DEVICE\" indices or a part of "
                "a name; devices: %s)",
                env, device_list(ds).c_str());
    return KERF_ERR_UNSUPPORTED;
  }
  for (const DevEntry& e : ds)
    if (e.type & CL_DEVICE_TYPE_GPU) {
      *out = e;
      return KERF_OK;
    }
  *out = ds[0];
  return KERF_OK;
}

// ---------------------------------------------------------------- kernel arguments

struct LocalArg {
  size_t bytes;
};
inline cl_int set_arg(cl_kernel k, cl_uint i, const LocalArg& a) { return clSetKernelArg(k, i, a.bytes, nullptr); }
template <class T>
inline cl_int set_arg(cl_kernel k, cl_uint i, const T& v) {
  return clSetKernelArg(k, i, sizeof(T), &v);
}

enum KernelId {
  kEmbedding,
  kRmsnorm,
  kGemv,
  kFfnGate,
  kGemm,
  kSiluMul,
  kAdd,
  kRotary,
  kKvStore,
  kAttention,
  kKernelCount
};
constexpr const char* kKernelNames[kKernelCount] = {"k_embedding", "k_rmsnorm", "k_gemv",   "k_ffn_gate",
                                                    "k_gemm",      "k_silu_mul", "k_add",   "k_rotary",
                                                    "k_kv_store",  "k_attention"};

/// From this many tokens on, matrices run as the tiled GEMM; below, as GEMV (a work-group per row
/// and token).
constexpr int64_t kGemmMinTokens = 4;
/// Most work-items of the reduction kernels' work-groups.
constexpr size_t kMaxGroup = 256;
/// Most keys one attention chunk holds in local memory.
constexpr int64_t kMaxChunk = 4096;

size_t pow2_floor(size_t n) {
  size_t p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

// ---------------------------------------------------------------- the backend

class GpuBackend final : public DeviceBackend {
 public:
  GpuBackend() = default;
  GpuBackend(const GpuBackend&) = delete;
  GpuBackend& operator=(const GpuBackend&) = delete;
  ~GpuBackend() override;

  fmt::Backend unit() const override { return fmt::Backend::kGpu; }
  const char* device_name() const override { return name_.c_str(); }

  int init(std::string* err);
  int prepare(kerf_session* s, const uint8_t* ops_on_unit, std::string* err) override;
  int upload(uint32_t v, const float* host, int64_t T, std::string* err) override;
  int download(uint32_t v, float* host, int64_t T, std::string* err) override;
  int run(size_t i, int64_t T, int64_t pos0, std::string* err) override;
  int finish(std::string* err) override;
  int kv_rows(size_t i, int64_t pos0, int64_t T, float* k, float* v, bool write, std::string* err) override;

 private:
  struct Weight {
    Mem mem;
    cl_ulong8 wd{};
    int64_t rows = 0, cols = 0;
  };
  struct Slot {
    Mem mem;
    int64_t width = 0;
    int64_t cap = 0;  ///< tokens the buffer holds
  };
  struct Rope {
    int64_t head_dim = 0;
    double theta = 0;
    Mem mem;
  };
  struct OpState {
    bool on = false;
    int w[3] = {-1, -1, -1};  ///< weights_ of Embedding / Linear (w[0]), GatedFFN (w1, w3, w2)
    int norm = -1;            ///< norms_ of RMSNorm
    int rope = -1;            ///< ropes_ of Rotary
    int kv = -1;              ///< kcache_ / vcache_ of Attention
    int64_t chunk = 0;        ///< Attention: keys per local-memory chunk
    size_t group = 1;         ///< Attention: work-items per (token, head)
  };

  int build_program(int ts, std::string* err);
  std::string op_label(size_t i) const;
  int add_weight(size_t i, uint32_t ref, int* out, std::string* err);
  int add_norm(size_t i, uint32_t ref, int* out, std::string* err);
  int add_rope(size_t i, int* out, std::string* err);
  int create_buffer(size_t bytes, cl_mem_flags flags, const void* host, Mem* out, const char* what,
                    std::string* err);
  void assign_slots(const std::vector<char>& touched);
  int ensure_slot(uint32_t v, int64_t T, cl_mem* out, std::string* err);
  int input(uint32_t v, int64_t T, cl_mem* out, std::string* err) const;
  int ensure_hidden(int64_t floats, std::string* err);
  size_t group_size(KernelId k, int64_t n) const;
  void rows_layout(KernelId k, int64_t K, size_t* lanes, size_t* rows) const;
  int run_op(size_t i, int64_t T, int64_t pos0, std::string* err);
  int linear(const Weight& w, cl_mem x, cl_mem y, int64_t T, std::string* err);
  void harvest();
  int drain(uint64_t* t, std::string* err);

  template <class... A>
  int launch(KernelId k, cl_uint dims, const size_t* global, const size_t* local, std::string* err,
             const A&... args) {
    cl_uint i = 0;
    cl_int rc = CL_SUCCESS;
    auto one = [&](const auto& a) {
      if (rc == CL_SUCCESS) {
        rc = set_arg(kernels_[k], i, a);
        if (rc == CL_SUCCESS) ++i;
      }
    };
    (one(args), ...);
    if (rc != CL_SUCCESS) {
      *err = strf("clSetKernelArg(%s, %u): %s", kKernelNames[k], unsigned(i), cl_error_name(rc));
      return status_of(rc);
    }
    cl_event ev = nullptr;
    rc = clEnqueueNDRangeKernel(queue_, kernels_[k], dims, nullptr, global, local, 0, nullptr,
                                profiling_ ? &ev : nullptr);
    if (rc != CL_SUCCESS) {
      *err = strf("clEnqueueNDRangeKernel(%s): %s", kKernelNames[k], cl_error_name(rc));
      return status_of(rc);
    }
    if (ev) pending_.push_back(Pending{ev, k});
    return KERF_OK;
  }

  // device
  cl_platform_id platform_ = nullptr;
  cl_device_id device_ = nullptr;
  cl_context ctx_ = nullptr;
  cl_command_queue queue_ = nullptr;
  cl_program program_ = nullptr;
  cl_kernel kernels_[kKernelCount] = {};
  size_t kernel_wg_[kKernelCount] = {};
  cl_ulong kernel_local_[kKernelCount] = {};
  std::string name_;
  bool profiling_ = false;
  cl_ulong local_mem_ = 0, max_alloc_ = 0;
  size_t max_wg_ = 1, max_item0_ = 1, max_item1_ = 1;
  int ts_ = 16;
  // session
  kerf_session* s_ = nullptr;
  const kerf_model* m_ = nullptr;
  int64_t n_ctx_ = 0;
  std::vector<OpState> ops_;
  std::vector<int> weight_of_tensor_, norm_of_tensor_;
  std::vector<Weight> weights_;
  std::vector<Mem> norms_;
  std::vector<Rope> ropes_;
  std::vector<Mem> kcache_, vcache_;
  std::vector<int> slot_of_;  ///< per value: its slot, -1 when no GPU-placed op touches it
  std::vector<Slot> slots_;
  Mem tokens_, h1_, h3_;
  int64_t hidden_cap_ = 0;  ///< floats in each of h1_, h3_
  struct Pending {
    cl_event ev;
    KernelId kernel;
  };
  std::vector<Pending> pending_;  ///< profiled launches not yet read (harvest)
  bool profile_print_ = false;    ///< KERF_OPENCL_PROFILE: per-kernel totals to stderr at the end
  uint64_t kernel_ns_[kKernelCount] = {}, kernel_runs_[kKernelCount] = {};
};

GpuBackend::~GpuBackend() {
  if (queue_) clFinish(queue_);
  harvest();
  if (profile_print_) {
    std::fprintf(stderr, "kerf OpenCL profile (%s):\n", name_.c_str());
    for (int k = 0; k < kKernelCount; ++k)
      if (kernel_runs_[k])
        std::fprintf(stderr, "  %-12s %8llu launches %10.3f ms\n", kKernelNames[k], (unsigned long long)kernel_runs_[k],
                     double(kernel_ns_[k]) / 1e6);
  }
  weights_.clear();
  norms_.clear();
  ropes_.clear();
  kcache_.clear();
  vcache_.clear();
  slots_.clear();
  tokens_.reset();
  h1_.reset();
  h3_.reset();
  for (cl_kernel& k : kernels_)
    if (k) clReleaseKernel(k);
  if (program_) clReleaseProgram(program_);
  if (queue_) clReleaseCommandQueue(queue_);
  if (ctx_) clReleaseContext(ctx_);
}

int GpuBackend::build_program(int ts, std::string* err) {
  for (cl_kernel& k : kernels_)
    if (k) {
      clReleaseKernel(k);
      k = nullptr;
    }
  if (program_) {
    clReleaseProgram(program_);
    program_ = nullptr;
  }
  const char* src = gpu::kKernelSource;
  const size_t len = std::strlen(src);
  cl_int rc = CL_SUCCESS;
  program_ = clCreateProgramWithSource(ctx_, 1, &src, &len, &rc);
  if (rc != CL_SUCCESS) {
    program_ = nullptr;
    *err = cl_fail("clCreateProgramWithSource", rc);
    return status_of(rc);
  }
  cl_device_fp_config fp = 0;
  if (const cl_int frc = clGetDeviceInfo(device_, CL_DEVICE_SINGLE_FP_CONFIG, sizeof fp, &fp, nullptr);
      frc != CL_SUCCESS) {
    *err = cl_fail("clGetDeviceInfo(CL_DEVICE_SINGLE_FP_CONFIG)", frc);
    return KERF_ERR_UNSUPPORTED;
  }
  std::string opts = strf("-cl-std=CL1.2 -DKERF_TS=%d", ts);
  if (fp & CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT) opts += " -cl-fp32-correctly-rounded-divide-sqrt";
  rc = clBuildProgram(program_, 1, &device_, opts.c_str(), nullptr, nullptr);
  if (rc != CL_SUCCESS) {
    std::string log;
    size_t n = 0;
    if (clGetProgramBuildInfo(program_, device_, CL_PROGRAM_BUILD_LOG, 0, nullptr, &n) == CL_SUCCESS && n > 1) {
      std::vector<char> b(n);
      if (clGetProgramBuildInfo(program_, device_, CL_PROGRAM_BUILD_LOG, n, b.data(), nullptr) == CL_SUCCESS)
        log.assign(b.data(), strnlen(b.data(), n));
    }
    *err = cl_fail("clBuildProgram", rc) + " (options \"" + opts + "\"); build log:\n" + log;
    return KERF_ERR_UNSUPPORTED;
  }
  for (int k = 0; k < kKernelCount; ++k) {
    kernels_[k] = clCreateKernel(program_, kKernelNames[k], &rc);
    if (rc != CL_SUCCESS) {
      kernels_[k] = nullptr;
      *err = strf("clCreateKernel(%s): %s", kKernelNames[k], cl_error_name(rc));
      return status_of(rc);
    }
    rc = clGetKernelWorkGroupInfo(kernels_[k], device_, CL_KERNEL_WORK_GROUP_SIZE, sizeof(size_t), &kernel_wg_[k],
                                  nullptr);
    if (rc == CL_SUCCESS)
      rc = clGetKernelWorkGroupInfo(kernels_[k], device_, CL_KERNEL_LOCAL_MEM_SIZE, sizeof(cl_ulong),
                                    &kernel_local_[k], nullptr);
    if (rc != CL_SUCCESS) {
      *err = strf("clGetKernelWorkGroupInfo(%s): %s", kKernelNames[k], cl_error_name(rc));
      return status_of(rc);
    }
  }
  ts_ = ts;
  return KERF_OK;
}

int GpuBackend::init(std::string* err) {
  DevEntry d;
  if (const int rc = select_device(&d, err); rc != KERF_OK) return rc;
  profile_print_ = std::getenv("KERF_OPENCL_PROFILE") != nullptr;
  platform_ = d.platform;
  device_ = d.device;
  std::string pv = gpu::platform_string(platform_, CL_PLATFORM_VERSION);
  if (const size_t cut = pv.find("  "); cut != std::string::npos) pv.resize(cut);  // PoCL appends build details
  name_ = pv + " / " + d.name + " (" + type_name(d.type) + ")";

  cl_bool little = CL_FALSE, avail = CL_FALSE, compiler = CL_FALSE;
  cl_int rc = CL_SUCCESS;
  auto info = [&](cl_device_info what, size_t n, void* out) {
    if (rc == CL_SUCCESS) rc = clGetDeviceInfo(device_, what, n, out, nullptr);
  };
  info(CL_DEVICE_ENDIAN_LITTLE, sizeof little, &little);
  info(CL_DEVICE_AVAILABLE, sizeof avail, &avail);
  info(CL_DEVICE_COMPILER_AVAILABLE, sizeof compiler, &compiler);
  info(CL_DEVICE_LOCAL_MEM_SIZE, sizeof local_mem_, &local_mem_);
  info(CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc_, &max_alloc_);
  info(CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof max_wg_, &max_wg_);
  cl_uint dims = 0;
  info(CL_DEVICE_MAX_WORK_ITEM_DIMENSIONS, sizeof dims, &dims);
  if (rc == CL_SUCCESS && dims < 3) {
    *err = name_ + strf(": the device has %u work-item dimensions (3 needed)", unsigned(dims));
    return KERF_ERR_UNSUPPORTED;
  }
  std::vector<size_t> items(dims, 1);
  info(CL_DEVICE_MAX_WORK_ITEM_SIZES, items.size() * sizeof(size_t), items.data());
  if (rc == CL_SUCCESS) {
    max_item0_ = items[0];
    max_item1_ = items[1];
  }
  if (rc != CL_SUCCESS) {
    *err = name_ + ": " + cl_fail("clGetDeviceInfo", rc);
    return KERF_ERR_UNSUPPORTED;
  }
  if (!avail || !compiler || !little) {
    *err = name_ + (!avail ? ": the device is not available" : !compiler ? ": the device has no OpenCL C compiler"
                                                                          : ": big-endian devices are not supported");
    return KERF_ERR_UNSUPPORTED;
  }
  const cl_context_properties props[] = {CL_CONTEXT_PLATFORM, reinterpret_cast<cl_context_properties>(platform_), 0};
  ctx_ = clCreateContext(props, 1, &device_, nullptr, nullptr, &rc);
  if (rc != CL_SUCCESS) {
    ctx_ = nullptr;
    *err = name_ + ": " + cl_fail("clCreateContext", rc);
    return status_of(rc);
  }
  queue_ = clCreateCommandQueue(ctx_, device_, CL_QUEUE_PROFILING_ENABLE, &rc);
  profiling_ = rc == CL_SUCCESS;
  if (rc == CL_INVALID_QUEUE_PROPERTIES) queue_ = clCreateCommandQueue(ctx_, device_, 0, &rc);  // no busy_ns then
  if (rc != CL_SUCCESS) {
    queue_ = nullptr;
    *err = name_ + ": " + cl_fail("clCreateCommandQueue", rc);
    return status_of(rc);
  }
  // The GEMM tile: 16 x 16 work-items where the device allows them, else 8 x 8.
  for (int ts : {16, 8}) {
    if (size_t(ts * ts) > max_wg_ || size_t(ts) > max_item0_) continue;
    if (const int brc = build_program(ts, err); brc != KERF_OK) {
      *err = name_ + ": " + *err;
      return brc;
    }
    if (kernel_wg_[kGemm] >= size_t(ts * ts)) return KERF_OK;
  }
  *err = name_ + strf(": the device runs too few work-items per work-group (%zu; the GEMM needs 64)",
                      kernel_wg_[kGemm]);
  return KERF_ERR_UNSUPPORTED;
}

std::string GpuBackend::op_label(size_t i) const {
  const OpInfo& op = m_->ops[i];
  const char* on = fmt::op_name(op.op);
  return strf("op #%zu '%.*s' (%s)", i, int(op.name.size()), op.name.data(), on ? on : "?");
}

int GpuBackend::create_buffer(size_t bytes, cl_mem_flags flags, const void* host, Mem* out, const char* what,
                              std::string* err) {
  bytes = std::max<size_t>(bytes, 4);
  if (bytes > max_alloc_) {
    *err = strf("%s needs a buffer of %zu bytes, more than the device's largest (CL_DEVICE_MAX_MEM_ALLOC_SIZE %llu)",
                what, bytes, (unsigned long long)max_alloc_);
    return KERF_ERR_MEMORY;
  }
  cl_int rc = CL_SUCCESS;
  cl_mem m = clCreateBuffer(ctx_, flags, bytes, const_cast<void*>(host), &rc);
  if (rc != CL_SUCCESS) {
    *err = strf("%s: clCreateBuffer(%zu bytes): %s", what, bytes, cl_error_name(rc));
    return status_of(rc);
  }
  out->reset();
  out->m = m;
  out->bytes = bytes;
  return KERF_OK;
}

int GpuBackend::add_weight(size_t i, uint32_t ref, int* out, std::string* err) {
  const uint32_t ti = ref & ~fmt::kRefTensorBit;
  if (weight_of_tensor_[ti] >= 0) {
    *out = weight_of_tensor_[ti];
    return KERF_OK;
  }
  const TensorInfo& t = m_->tensors[ti];
  const WeightView wv = t.view();
  char prec[64];
  fmt::describe_qtype(t.dtype, t.flags, t.group_size, prec, sizeof prec);
  const std::string tname(t.name);
  switch (t.dtype) {
    case DType::kF32: case DType::kF16: case DType::kBF16: case DType::kQ8Sym: case DType::kQ4Asym:
    case DType::kQSym: case DType::kQAsym: case DType::kTernary: case DType::kBinary:
      break;
    default:
      *err = op_label(i) + strf(": weight '%s' has dtype %s, which the GPU backend does not read", tname.c_str(), prec);
      return KERF_ERR_UNSUPPORTED;
  }
  if (fmt::dtype_is_generic_quant(t.dtype) && fmt::qflags_layout(t.flags) != fmt::Layout::kPlain) {
    *err = op_label(i) + strf(": weight '%s' (%s) has the tiled layout, which the GPU backend does not read; "
                              "compile GPU-placed ops with the plain layout",
                              tname.c_str(), prec);
    return KERF_ERR_UNSUPPORTED;
  }
  if (wv.cols < 1 || wv.rows < 1 || wv.cols > INT32_MAX || wv.rows > INT32_MAX) {
    *err = op_label(i) + strf(": weight '%s' [%lld, %lld] is too large for the GPU kernels' 32-bit indices",
                              tname.c_str(), (long long)wv.rows, (long long)wv.cols);
    return KERF_ERR_UNSUPPORTED;
  }
  Weight w;
  w.rows = wv.rows;
  w.cols = wv.cols;
  const uint64_t R = uint64_t(wv.rows), C = uint64_t(wv.cols), g = wv.group;
  cl_ulong* d = w.wd.s;
  d[0] = cl_ulong(t.dtype);
  d[1] = C;
  d[2] = g;
  if (t.dtype == DType::kQ8Sym) {
    d[3] = C;
    d[4] = R * C;
  } else if (t.dtype == DType::kQ4Asym) {
    const uint64_t rb = (C + 1) / 2, ng = (C + g - 1) / g;
    d[3] = rb;
    d[4] = R * rb;
    d[5] = R * rb + 2 * R * ng;
  } else if (fmt::dtype_is_generic_quant(t.dtype)) {
    const fmt::QLayout L = fmt::qlayout(t.dtype, R, C, g, t.flags);
    d[0] |= cl_ulong(fmt::qflags_bits(t.flags)) << 8;
    if (fmt::qflags_scale(t.flags) == fmt::ScaleFormat::kK6) d[0] |= cl_ulong(1) << 16;
    d[3] = L.row_bytes;
    d[4] = L.scale;
    d[5] = L.min;
    d[6] = L.super_scale;
    d[7] = L.super_min;
  }
  const std::string what = op_label(i) + ": weight '" + tname + "'";
  if (const int rc = create_buffer(size_t(t.size), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, t.data, &w.mem,
                                   what.c_str(), err);
      rc != KERF_OK)
    return rc;
  weights_.push_back(std::move(w));
  *out = weight_of_tensor_[ti] = int(weights_.size() - 1);
  return KERF_OK;
}

int GpuBackend::add_norm(size_t i, uint32_t ref, int* out, std::string* err) {
  const uint32_t ti = ref & ~fmt::kRefTensorBit;
  if (norm_of_tensor_[ti] >= 0) {
    *out = norm_of_tensor_[ti];
    return KERF_OK;
  }
  const TensorInfo& t = m_->tensors[ti];
  const int64_t n = t.shape[0];
  std::vector<float> f(static_cast<size_t>(n));
  for (int64_t c = 0; c < n; ++c) {
    uint16_t h;
    switch (t.dtype) {
      case DType::kF32: std::memcpy(&f[size_t(c)], t.data + 4 * c, 4); break;
      case DType::kF16: std::memcpy(&h, t.data + 2 * c, 2); f[size_t(c)] = fmt::f16_to_f32(h); break;
      case DType::kBF16: std::memcpy(&h, t.data + 2 * c, 2); f[size_t(c)] = fmt::bf16_to_f32(h); break;
      default: {
        char prec[64];
        fmt::describe_qtype(t.dtype, t.flags, t.group_size, prec, sizeof prec);
        *err = op_label(i) + strf(": norm weight '%.*s' has dtype %s (f32, f16 or bf16 expected)", int(t.name.size()),
                                  t.name.data(), prec);
        return KERF_ERR_UNSUPPORTED;
      }
    }
  }
  Mem mem;
  const std::string what = op_label(i) + ": norm weight";
  if (const int rc = create_buffer(f.size() * 4, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, f.data(), &mem,
                                   what.c_str(), err);
      rc != KERF_OK)
    return rc;
  norms_.push_back(std::move(mem));
  *out = norm_of_tensor_[ti] = int(norms_.size() - 1);
  return KERF_OK;
}

int GpuBackend::add_rope(size_t i, int* out, std::string* err) {
  const OpInfo& op = m_->ops[i];
  for (size_t r = 0; r < ropes_.size(); ++r)
    if (ropes_[r].head_dim == op.head_dim && ropes_[r].theta == op.theta) {
      *out = int(r);
      return KERF_OK;
    }
  // The CPU's table (rope_table_fill: cos / sin in double, rounded to f32) for every position.
  std::vector<float> table(size_t(n_ctx_ * op.head_dim));
  rope_table_fill(op.head_dim, op.theta, 0, n_ctx_, table.data());
  Rope r;
  r.head_dim = op.head_dim;
  r.theta = op.theta;
  const std::string what = op_label(i) + ": RoPE table";
  if (const int rc = create_buffer(table.size() * 4, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, table.data(), &r.mem,
                                   what.c_str(), err);
      rc != KERF_OK)
    return rc;
  ropes_.push_back(std::move(r));
  *out = int(ropes_.size() - 1);
  return KERF_OK;
}

/// Slots for the values in `touched`, by their lifetimes in program order (as the CPU's
/// assign_slots): an op's output takes a free slot (the smallest wide enough, else the widest,
/// widened) before the slots of the values it reads last are freed, so an output never shares a
/// buffer with an input, and the program output's slot is never freed.
void GpuBackend::assign_slots(const std::vector<char>& touched) {
  const size_t nv = m_->values.size(), nops = m_->ops.size();
  std::vector<size_t> last_use(nv, 0);
  for (size_t i = 0; i < nops; ++i)
    for (uint32_t ref : m_->ops[i].inputs)
      if (!(ref & fmt::kRefTensorBit)) last_use[ref] = i;
  slot_of_.assign(nv, -1);
  slots_.clear();
  std::vector<int> free_slots;
  auto take = [&](int64_t w) {
    int best = -1;
    for (int f : free_slots) {
      if (best < 0) {
        best = f;
        continue;
      }
      const int64_t wf = slots_[size_t(f)].width, wb = slots_[size_t(best)].width;
      const bool better = (wf >= w) != (wb >= w) ? wf >= w : (wf >= w ? wf < wb : wf > wb);
      if (better) best = f;
    }
    if (best < 0) {
      best = int(slots_.size());
      slots_.emplace_back();
    } else {
      free_slots.erase(std::find(free_slots.begin(), free_slots.end(), best));
    }
    slots_[size_t(best)].width = std::max(slots_[size_t(best)].width, w);
    return best;
  };
  auto release = [&](uint32_t v) {
    const int sl = slot_of_[v];
    if (v != m_->output_value && sl >= 0 && std::find(free_slots.begin(), free_slots.end(), sl) == free_slots.end())
      free_slots.push_back(sl);
  };
  for (size_t i = 0; i < nops; ++i) {
    const OpInfo& op = m_->ops[i];
    if (touched[op.output]) slot_of_[op.output] = take(int64_t(m_->values[op.output].width));
    for (uint32_t ref : op.inputs)
      if (!(ref & fmt::kRefTensorBit) && last_use[ref] == i) release(ref);
    if (last_use[op.output] <= i) release(op.output);  // never read
  }
}

int GpuBackend::prepare(kerf_session* s, const uint8_t* on, std::string* err) {
  if (!s || !s->model || !on) {
    *err = "prepare needs a session and the op mask";
    return KERF_ERR_ARGUMENT;
  }
  if (queue_) {  // a second prepare: nothing of the first may still run
    uint64_t t = now_ns();
    if (const int rc = drain(&t, err); rc != KERF_OK) return rc;
  }
  s_ = s;
  m_ = s->model;
  n_ctx_ = s->n_ctx;
  const size_t nops = m_->ops.size(), nv = m_->values.size();
  ops_.assign(nops, OpState{});
  weight_of_tensor_.assign(m_->tensors.size(), -1);
  norm_of_tensor_.assign(m_->tensors.size(), -1);
  weights_.clear();
  norms_.clear();
  ropes_.clear();
  kcache_.clear();
  vcache_.clear();
  tokens_.reset();
  h1_.reset();
  h3_.reset();
  hidden_cap_ = 0;
  std::vector<char> touched(nv, 0);
  bool embedding = false;
  for (size_t i = 0; i < nops; ++i) {
    if (!on[i]) continue;
    const OpInfo& op = m_->ops[i];
    OpState& st = ops_[i];
    st.on = true;
    for (uint32_t ref : op.inputs)
      if (!(ref & fmt::kRefTensorBit) && ref != m_->input_value) touched[ref] = 1;
    touched[op.output] = 1;
    const int64_t out_w = m_->values[op.output].width;
    if (out_w * n_ctx_ > INT32_MAX) {
      *err = op_label(i) + strf(": output width %lld x n_ctx %lld is too large for 32-bit indices",
                                          (long long)out_w, (long long)n_ctx_);
      return KERF_ERR_UNSUPPORTED;
    }
    int rc = KERF_OK;
    switch (op.op) {
      case OpCode::kEmbedding:
        embedding = true;
        rc = add_weight(i, op.inputs[1], &st.w[0], err);
        break;
      case OpCode::kLinear:
        rc = add_weight(i, op.inputs[1], &st.w[0], err);
        break;
      case OpCode::kGatedFFN:
        if (op.activation != 1) {
          *err = op_label(i) + strf(": activation %lld is not supported (1 = silu)", (long long)op.activation);
          rc = KERF_ERR_UNSUPPORTED;
          break;
        }
        for (int k = 0; k < 3 && rc == KERF_OK; ++k) rc = add_weight(i, op.inputs[size_t(k) + 1], &st.w[k], err);
        break;
      case OpCode::kRMSNorm:
        rc = add_norm(i, op.inputs[1], &st.norm, err);
        break;
      case OpCode::kRotary:
        rc = add_rope(i, &st.rope, err);
        break;
      case OpCode::kAttention: {
        const int64_t H = op.n_heads, G = op.n_kv_heads, Dh = op.head_dim;
        const size_t L = std::min<size_t>(pow2_floor(std::min({kMaxGroup, kernel_wg_[kAttention], max_item0_})), 128);
        st.group = L;
        const int64_t avail =
            (int64_t(local_mem_) - int64_t(kernel_local_[kAttention]) - 64) / 4 - 2 * Dh - int64_t(L);
        st.chunk = std::min<int64_t>({n_ctx_, kMaxChunk, avail});
        if (H < 1 || G < 1 || H % G != 0 || Dh < 1) {
          *err = op_label(i) + strf(": bad heads (n_heads %lld, n_kv_heads %lld, head_dim %lld)", (long long)H,
                                    (long long)G, (long long)Dh);
          rc = KERF_ERR_UNSUPPORTED;
          break;
        }
        if (st.chunk < 16) {
          *err = op_label(i) + strf(": head_dim %lld does not fit the device's local memory (%llu bytes)",
                                    (long long)Dh, (unsigned long long)local_mem_);
          rc = KERF_ERR_UNSUPPORTED;
          break;
        }
        // Testing knob: smaller chunks exercise the online-softmax merge on short contexts.
        if (const char* ch = std::getenv("KERF_OPENCL_ATTN_CHUNK"); ch && std::atoi(ch) > 0)
          st.chunk = std::min<int64_t>(st.chunk, std::atoi(ch));
        st.kv = int(kcache_.size());
        kcache_.emplace_back();
        vcache_.emplace_back();
        const size_t bytes = size_t(n_ctx_ * G * Dh) * 4;
        const std::string what = op_label(i) + ": KV cache";
        rc = create_buffer(bytes, CL_MEM_READ_WRITE, nullptr, &kcache_.back(), what.c_str(), err);
        if (rc == KERF_OK) rc = create_buffer(bytes, CL_MEM_READ_WRITE, nullptr, &vcache_.back(), what.c_str(), err);
        break;
      }
      case OpCode::kAdd:
        break;
      default:
        *err = op_label(i) + ": op not supported by the GPU backend";
        rc = KERF_ERR_UNSUPPORTED;
    }
    if (rc != KERF_OK) return rc;
  }
  assign_slots(touched);
  if (embedding) {
    if (const int rc = create_buffer(size_t(n_ctx_) * 4, CL_MEM_READ_ONLY, nullptr, &tokens_, "token ids", err);
        rc != KERF_OK)
      return rc;
  }
  return KERF_OK;
}

int GpuBackend::ensure_slot(uint32_t v, int64_t T, cl_mem* out, std::string* err) {
  if (v >= slot_of_.size() || slot_of_[v] < 0) {
    *err = strf("value #%u '%.*s' is not read or written by a GPU-placed op", v, int(m_->values[v].name.size()),
                m_->values[v].name.data());
    return KERF_ERR_ARGUMENT;
  }
  Slot& sl = slots_[size_t(slot_of_[v])];
  if (sl.cap < T) {
    const int64_t cap = std::min<int64_t>(n_ctx_, std::max<int64_t>(T, (T + 15) / 16 * 16));
    sl.mem.reset();
    sl.cap = 0;
    const std::string what = strf("activation buffer (value '%.*s')", int(m_->values[v].name.size()),
                                  m_->values[v].name.data());
    const size_t bytes = size_t(cap * sl.width) * 4;
    if (const int rc = create_buffer(bytes, CL_MEM_READ_WRITE, nullptr, &sl.mem, what.c_str(), err);
        rc != KERF_OK)
      return rc;
    sl.cap = cap;
  }
  *out = sl.mem.m;
  return KERF_OK;
}

int GpuBackend::input(uint32_t v, int64_t T, cl_mem* out, std::string* err) const {
  if (v >= slot_of_.size() || slot_of_[v] < 0 || slots_[size_t(slot_of_[v])].cap < T) {
    *err = strf("input value #%u '%.*s' has no valid copy on the GPU", v, int(m_->values[v].name.size()),
                m_->values[v].name.data());
    return KERF_ERR_ARGUMENT;
  }
  *out = slots_[size_t(slot_of_[v])].mem.m;
  return KERF_OK;
}

int GpuBackend::ensure_hidden(int64_t floats, std::string* err) {
  if (hidden_cap_ >= floats) return KERF_OK;
  hidden_cap_ = 0;
  h1_.reset();
  h3_.reset();
  if (int rc = create_buffer(size_t(floats) * 4, CL_MEM_READ_WRITE, nullptr, &h1_, "GatedFFN hidden buffer", err);
      rc != KERF_OK)
    return rc;
  if (int rc = create_buffer(size_t(floats) * 4, CL_MEM_READ_WRITE, nullptr, &h3_, "GatedFFN hidden buffer", err);
      rc != KERF_OK)
    return rc;
  hidden_cap_ = floats;
  return KERF_OK;
}

/// Work-items of a reduction kernel's work-group for rows of n elements: a power of two, at most
/// n (no idle work-items), kMaxGroup and what the kernel and device allow.
size_t GpuBackend::group_size(KernelId k, int64_t n) const {
  size_t L = pow2_floor(std::min({kMaxGroup, kernel_wg_[k], max_item0_}));
  while (L > 1 && int64_t(L) > n) L >>= 1;
  return L;
}

/// GEMV-style kernels: `lanes` work-items per row (a power of two, at most 32 and at most the
/// row's 8-element chunks), `rows` rows per work-group (lanes * rows <= kMaxGroup and what the
/// kernel and device allow).
void GpuBackend::rows_layout(KernelId k, int64_t K, size_t* lanes, size_t* rows) const {
  const size_t wg = pow2_floor(std::min({kMaxGroup, kernel_wg_[k], max_wg_}));
  size_t ln = std::min<size_t>({32, pow2_floor(size_t((K + 7) / 8)), pow2_floor(max_item0_), wg});
  *lanes = ln;
  *rows = std::max<size_t>(1, std::min(wg / ln, pow2_floor(max_item1_)));
}

int GpuBackend::upload(uint32_t v, const float* host, int64_t T, std::string* err) {
  const uint64_t t0 = now_ns();
  if (!m_ || !host || T < 1 || T > n_ctx_ || v >= m_->values.size()) {
    *err = "upload: bad arguments (prepare first; 1 <= T <= n_ctx)";
    return KERF_ERR_ARGUMENT;
  }
  cl_mem mem = nullptr;
  if (const int rc = ensure_slot(v, T, &mem, err); rc != KERF_OK) {
    *err = "upload: " + *err;
    return rc;
  }
  const size_t bytes = size_t(T) * m_->values[v].width * 4;
  uint64_t t1 = t0;
  if (const int rc = drain(&t1, err); rc != KERF_OK) return rc;
  // Blocking: the executor reuses the host buffer right after.
  const cl_int rc = clEnqueueWriteBuffer(queue_, mem, CL_TRUE, 0, bytes, host, 0, nullptr, nullptr);
  if (rc != CL_SUCCESS) {
    *err = strf("upload of value '%.*s': ", int(m_->values[v].name.size()), m_->values[v].name.data()) +
           cl_fail("clEnqueueWriteBuffer", rc);
    return status_of(rc);
  }
  stats.uploads += 1;
  stats.upload_bytes += bytes;
  stats.transfer_ns += now_ns() - t1;
  return KERF_OK;
}

int GpuBackend::download(uint32_t v, float* host, int64_t T, std::string* err) {
  const uint64_t t0 = now_ns();
  if (!m_ || !host || T < 1 || T > n_ctx_ || v >= m_->values.size()) {
    *err = "download: bad arguments (prepare first; 1 <= T <= n_ctx)";
    return KERF_ERR_ARGUMENT;
  }
  cl_mem mem = nullptr;
  if (const int rc = input(v, T, &mem, err); rc != KERF_OK) {
    *err = "download: " + *err;
    return rc;
  }
  const size_t bytes = size_t(T) * m_->values[v].width * 4;
  uint64_t t1 = t0;
  if (const int rc = drain(&t1, err); rc != KERF_OK) return rc;
  const cl_int rc = clEnqueueReadBuffer(queue_, mem, CL_TRUE, 0, bytes, host, 0, nullptr, nullptr);
  if (rc != CL_SUCCESS) {
    *err = strf("download of value '%.*s': ", int(m_->values[v].name.size()), m_->values[v].name.data()) +
           cl_fail("clEnqueueReadBuffer", rc);
    return status_of(rc);
  }
  stats.downloads += 1;
  stats.download_bytes += bytes;
  stats.transfer_ns += now_ns() - t1;
  return KERF_OK;
}

int GpuBackend::kv_rows(size_t i, int64_t pos0, int64_t T, float* k, float* v, bool write, std::string* err) {
  const uint64_t t0 = now_ns();
  if (!m_ || i >= ops_.size() || ops_[i].kv < 0 || !k || !v || T < 1 || pos0 < 0 || pos0 + T > n_ctx_) {
    *err = "kv_rows: bad arguments (an Attention op on this unit; rows within n_ctx)";
    return KERF_ERR_ARGUMENT;
  }
  // The device caches are head-major [G][n_ctx][Dh] (k_kv_store); the host rows [T][G*Dh]: one
  // rectangular copy per KV head.
  const OpInfo& op = m_->ops[i];
  const size_t G = size_t(op.n_kv_heads), Dh = size_t(op.head_dim), bytes = 2 * size_t(T) * G * Dh * 4;
  uint64_t t1 = t0;
  if (const int rc = drain(&t1, err); rc != KERF_OK) return rc;
  for (int c = 0; c < 2; ++c) {
    cl_mem mem = (c == 0 ? kcache_ : vcache_)[size_t(ops_[i].kv)].m;
    float* host = c == 0 ? k : v;
    for (size_t g = 0; g < G; ++g) {
      const size_t dev_origin[3] = {(g * size_t(n_ctx_) + size_t(pos0)) * Dh * 4, 0, 0};
      const size_t host_origin[3] = {g * Dh * 4, 0, 0};
      const size_t region[3] = {Dh * 4, size_t(T), 1};
      const cl_int rc =
          write ? clEnqueueWriteBufferRect(queue_, mem, CL_TRUE, dev_origin, host_origin, region, Dh * 4, 0, G * Dh * 4, 0,
                                           host, 0, nullptr, nullptr)
                : clEnqueueReadBufferRect(queue_, mem, CL_TRUE, dev_origin, host_origin, region, Dh * 4, 0, G * Dh * 4, 0,
                                          host, 0, nullptr, nullptr);
      if (rc != CL_SUCCESS) {
        *err = op_label(i) + ": KV cache handoff: " + cl_fail(write ? "clEnqueueWriteBufferRect" : "clEnqueueReadBufferRect", rc);
        return status_of(rc);
      }
    }
  }
  if (write) stats.uploads += 2, stats.upload_bytes += bytes;
  else stats.downloads += 2, stats.download_bytes += bytes;
  stats.transfer_ns += now_ns() - t1;
  return KERF_OK;
}

/// Waits for the kernels enqueued so far (a transfer first waits for them: the in-order queue would
/// anyway) and counts the wait as run time, so that transfer_ns is the copy alone. *t: when the
/// wait began on entry, when it ended on return.
int GpuBackend::drain(uint64_t* t, std::string* err) {
  if (pending_.empty() && profiling_) return KERF_OK;  // nothing enqueued since the last drain
  const cl_int rc = clFinish(queue_);
  if (rc != CL_SUCCESS) {
    *err = cl_fail("clFinish", rc);
    return status_of(rc);
  }
  harvest();
  const uint64_t now = now_ns();
  stats.run_ns += now - *t;
  *t = now;
  return KERF_OK;
}

int GpuBackend::finish(std::string* err) {
  if (!queue_) return KERF_OK;
  uint64_t t = now_ns();
  return drain(&t, err);
}

void GpuBackend::harvest() {
  for (const Pending& p : pending_) {
    cl_ulong a = 0, b = 0;
    if (clGetEventProfilingInfo(p.ev, CL_PROFILING_COMMAND_START, sizeof a, &a, nullptr) == CL_SUCCESS &&
        clGetEventProfilingInfo(p.ev, CL_PROFILING_COMMAND_END, sizeof b, &b, nullptr) == CL_SUCCESS && b > a) {
      stats.busy_ns += b - a;
      kernel_ns_[p.kernel] += b - a;
    }
    kernel_runs_[p.kernel] += 1;
    clReleaseEvent(p.ev);
  }
  pending_.clear();
}

int GpuBackend::run(size_t i, int64_t T, int64_t pos0, std::string* err) {
  const uint64_t t0 = now_ns();
  if (!m_ || i >= ops_.size() || !ops_[i].on) {
    *err = strf("run: op #%zu is not placed on the GPU (prepare first)", i);
    return KERF_ERR_ARGUMENT;
  }
  if (T < 1 || pos0 < 0 || pos0 + T > n_ctx_) {
    *err = op_label(i) +
           strf(": positions %lld..%lld outside the context of %lld", (long long)pos0, (long long)(pos0 + T - 1),
                (long long)n_ctx_);
    return T < 1 || pos0 < 0 ? KERF_ERR_ARGUMENT : KERF_ERR_CONTEXT;
  }
  std::string e;
  const int rc = run_op(i, T, pos0, &e);
  if (rc != KERF_OK) {
    *err = op_label(i) + ": " + e;
    return rc;
  }
  // Events are read at the next download / finish; bound the list when neither comes.
  stats.ops += 1;
  uint64_t t = now_ns();
  stats.run_ns += t - t0;
  if (pending_.size() > 65536) return drain(&t, err);  // adds the wait to run_ns
  return KERF_OK;
}

int GpuBackend::linear(const Weight& w, cl_mem x, cl_mem y, int64_t T, std::string* err) {
  const cl_uint nf = 0, N = cl_uint(w.rows);
  if (T < kGemmMinTokens) {
    size_t ln = 1, rw = 1;
    rows_layout(kGemv, w.cols, &ln, &rw);
    const size_t global[3] = {ln, (size_t(w.rows) + rw - 1) / rw * rw, size_t(T)}, local[3] = {ln, rw, 1};
    return launch(kGemv, 3, global, local, err, w.mem.m, w.wd, nf, x, y, N, LocalArg{ln * rw * 4});
  }
  const size_t ts = size_t(ts_);
  const size_t global[2] = {(size_t(w.rows) + ts - 1) / ts * ts, (size_t(T) + ts - 1) / ts * ts}, local[2] = {ts, ts};
  return launch(kGemm, 2, global, local, err, w.mem.m, w.wd, nf, x, y, N, cl_uint(T));
}

int GpuBackend::run_op(size_t i, int64_t T, int64_t pos0, std::string* err) {
  const OpInfo& op = m_->ops[i];
  const OpState& st = ops_[i];
  const uint32_t ov = op.output;
  const int64_t out_w = m_->values[ov].width;
  cl_mem out = nullptr;
  if (const int rc = ensure_slot(ov, T, &out, err); rc != KERF_OK) return rc;
  cl_mem in[3] = {nullptr, nullptr, nullptr};
  for (size_t k = 0; k < op.inputs.size() && k < 3; ++k) {
    const uint32_t ref = op.inputs[k];
    if ((ref & fmt::kRefTensorBit) || ref == m_->input_value) continue;
    if (const int rc = input(ref, T, &in[k], err); rc != KERF_OK) return rc;
  }
  const cl_uint nf = 0;
  switch (op.op) {
    case OpCode::kEmbedding: {
      const Weight& w = weights_[size_t(st.w[0])];
      if (int64_t(s_->tokens.size()) < T) {
        *err = strf("%zu token ids for %lld rows", s_->tokens.size(), (long long)T);
        return KERF_ERR_ARGUMENT;
      }
      for (int64_t t = 0; t < T; ++t)
        if (s_->tokens[size_t(t)] < 0 || s_->tokens[size_t(t)] >= w.rows) {
          *err = strf("token id %d outside the table's %lld rows", int(s_->tokens[size_t(t)]), (long long)w.rows);
          return KERF_ERR_ARGUMENT;
        }
      // Blocking (T ints): s->tokens may change as soon as this returns.
      const cl_int rc = clEnqueueWriteBuffer(queue_, tokens_.m, CL_TRUE, 0, size_t(T) * 4, s_->tokens.data(), 0,
                                             nullptr, nullptr);
      if (rc != CL_SUCCESS) {
        *err = cl_fail("clEnqueueWriteBuffer(token ids)", rc);
        return status_of(rc);
      }
      const size_t global[2] = {size_t((w.cols + 7) / 8), size_t(T)};
      return launch(kEmbedding, 2, global, nullptr, err, tokens_.m, w.mem.m, w.wd, nf, out, cl_uint(w.cols));
    }
    case OpCode::kRMSNorm: {
      const size_t L = group_size(kRmsnorm, out_w);
      const size_t global[1] = {size_t(T) * L}, local[1] = {L};
      return launch(kRmsnorm, 1, global, local, err, in[0], norms_[size_t(st.norm)].m, out, cl_uint(out_w),
                    cl_float(float(op.eps)), LocalArg{L * 4});
    }
    case OpCode::kLinear:
      return linear(weights_[size_t(st.w[0])], in[0], out, T, err);
    case OpCode::kRotary: {
      const size_t global[2] = {size_t(out_w / 2), size_t(T)};
      return launch(kRotary, 2, global, nullptr, err, in[0], out, ropes_[size_t(st.rope)].mem.m, cl_uint(out_w),
                    cl_uint(op.head_dim), cl_uint(op.interleaved != 0), cl_uint(pos0), nf);
    }
    case OpCode::kAttention: {
      const cl_uint H = cl_uint(op.n_heads), G = cl_uint(op.n_kv_heads), Dh = cl_uint(op.head_dim);
      cl_mem kc = kcache_[size_t(st.kv)].m, vc = vcache_[size_t(st.kv)].m;
      const size_t gs[2] = {size_t(G) * Dh, size_t(T)};
      if (const int rc = launch(kKvStore, 2, gs, nullptr, err, in[1], in[2], kc, vc, G, Dh, cl_uint(n_ctx_),
                                cl_uint(pos0));
          rc != KERF_OK)
        return rc;
      const size_t L = st.group;
      const size_t global[2] = {size_t(T) * L, size_t(H)}, local[2] = {L, 1};
      const cl_uint CH = cl_uint(st.chunk);
      return launch(kAttention, 2, global, local, err, in[0], kc, vc, out, cl_uint(T), cl_uint(pos0), H, G, Dh,
                    cl_uint(n_ctx_), cl_float(float(op.scale)), cl_uint(op.causal != 0), CH, LocalArg{Dh * 4u},
                    LocalArg{Dh * 4u}, LocalArg{L * 4}, LocalArg{size_t(CH) * 4});
    }
    case OpCode::kGatedFFN: {
      const Weight &w1 = weights_[size_t(st.w[0])], &w3 = weights_[size_t(st.w[1])], &w2 = weights_[size_t(st.w[2])];
      const int64_t F = w1.rows;
      if (const int rc = ensure_hidden(T * F, err); rc != KERF_OK) return rc;
      if (T < kGemmMinTokens) {
        size_t ln = 1, rw = 1;
        rows_layout(kFfnGate, w1.cols, &ln, &rw);
        const size_t global[3] = {ln, (size_t(F) + rw - 1) / rw * rw, size_t(T)}, local[3] = {ln, rw, 1};
        if (const int rc = launch(kFfnGate, 3, global, local, err, w1.mem.m, w1.wd, w3.mem.m, w3.wd, nf, in[0], h1_.m,
                                  cl_uint(F), LocalArg{ln * rw * 4});
            rc != KERF_OK)
          return rc;
      } else {
        if (int rc = linear(w1, in[0], h1_.m, T, err); rc != KERF_OK) return rc;
        if (int rc = linear(w3, in[0], h3_.m, T, err); rc != KERF_OK) return rc;
        const size_t global[1] = {size_t(T * F)};
        if (int rc = launch(kSiluMul, 1, global, nullptr, err, h1_.m, h3_.m); rc != KERF_OK) return rc;
      }
      return linear(w2, h1_.m, out, T, err);
    }
    case OpCode::kAdd: {
      const size_t global[1] = {size_t(T * out_w)};
      return launch(kAdd, 1, global, nullptr, err, in[0], in[1], out);
    }
  }
  *err = "op not supported by the GPU backend";
  return KERF_ERR_UNSUPPORTED;
}

}  // namespace

std::unique_ptr<DeviceBackend> make_gpu_backend(std::string* err) {
  std::unique_ptr<GpuBackend> b(new (std::nothrow) GpuBackend);
  if (!b) {
    if (err) *err = "OpenCL GPU backend: out of memory";
    return nullptr;
  }
  std::string e;
  if (b->init(&e) != KERF_OK) {
    if (err) *err = "OpenCL GPU backend: " + e;
    return nullptr;
  }
  return b;
}

}  // namespace kerf::rt
