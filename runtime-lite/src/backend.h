// runtime-lite internals: compute units other than the CPU (the GPU backend over OpenCL, the NPU
// backend that is the bit-exact reference of the integer-only NPU arithmetic) and the contract
// between them and the executor. Private header; no exceptions, no RTTI (virtual calls only).
//
// Placement (formats/SPEC.md section 7.3): every op of the program carries a Backend in its OpEntry
// (the decode placement, used when kerf_session_eval runs one token) and the metadata key
// "placement.prefill" may give another unit per op for evaluations of more than one token. An
// Attention op whose two units differ keeps a KV cache on each: before an evaluation runs it on one
// unit, the executor copies over the rows the other unit appended since (kv_rows), so either phase
// attends over every position.
//
// Residency. The executor keeps, per activation value, the set of units holding a valid copy. An
// op placed on unit U runs only when all of its value inputs are valid on U; otherwise the executor
// first moves them: to the CPU with DeviceBackend::download, from the CPU with upload (a value on
// another device goes through the CPU). After the op, its output is valid on U only. The program
// output (logits) is downloaded at the end of every evaluation. Transfers are where conversions
// happen: the NPU backend's upload quantizes f32 rows to its integer codes with the value's static
// scale, its download dequantizes them.
//
// Activations on the CPU are float32 [T, width] row-major (kerf_session::vals). A backend keeps its
// own copy of each value it touches (device buffers for the GPU, integer codes for the NPU),
// allocated in prepare() for up to n_ctx tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kerf/format.h"

struct kerf_session;
struct kerf_model;

namespace kerf::rt {

/// Time and traffic of one unit over a session's evaluations (kerf_session_unit_stats).
struct UnitStats {
  uint64_t ops = 0;          ///< op runs
  uint64_t run_ns = 0;       ///< host wall time inside run() (for an asynchronous unit: enqueue + waits)
  uint64_t busy_ns = 0;      ///< device time as the device measured it (0 when it cannot say)
  uint64_t uploads = 0, upload_bytes = 0;      ///< host -> unit transfers (f32 bytes read from the host)
  uint64_t downloads = 0, download_bytes = 0;  ///< unit -> host transfers (f32 bytes written to the host)
  uint64_t transfer_ns = 0;  ///< host wall time inside upload() / download()
};

/// A compute unit. One instance per session and unit; created by make_gpu_backend /
/// make_npu_backend. All methods return KERF_OK or a negative kerf_status and, on failure, write a
/// message naming the op / tensor / value into *err (where taken).
class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual fmt::Backend unit() const = 0;
  /// Human-readable device, e.g. "OpenCL: Portable Computing Language / pthread-skylake (PoCL 3.1)".
  virtual const char* device_name() const = 0;

  /// Called once by kerf_session_create after the model is loaded: checks that every op placed on
  /// this unit (in either placement, `ops_on_unit[i]` != 0) is supported with its weight dtypes,
  /// uploads / converts those weights, allocates the value copies for s->n_ctx tokens and the KV
  /// caches of its Attention ops. KERF_ERR_UNSUPPORTED names the first op (index and name) and the
  /// reason ("Linear 'layers.0.q': weight dtype qasym3/k6 g32 is not supported on the NPU").
  virtual int prepare(kerf_session* s, const uint8_t* ops_on_unit, std::string* err) = 0;

  /// Value `v`: rows [0, T) of host f32 [T, width] become this unit's copy.
  virtual int upload(uint32_t v, const float* host, int64_t T, std::string* err) = 0;
  /// Value `v`: this unit's rows [0, T) to host f32 [T, width] (waits for pending work on it).
  virtual int download(uint32_t v, float* host, int64_t T, std::string* err) = 0;

  /// Runs op `i` of the model on T tokens at positions pos0..pos0+T-1 (its value inputs are valid
  /// on this unit; Attention appends rows [0, T) of k and v to this unit's KV cache at pos0). May
  /// return before the device finishes (download waits).
  virtual int run(size_t i, int64_t T, int64_t pos0, std::string* err) = 0;

  /// Waits for everything enqueued (before timing is read, and at the end of an evaluation).
  virtual int finish(std::string* err) = 0;

  /// KV-cache handoff of Attention op `i` (placed on this unit in some phase): rows [pos0, pos0 + T)
  /// of its K and V caches as f32 [T, G*Dh], read into k / v (`write` false; waits for pending
  /// work) or written from them (`write` true; the NPU quantizes with the k / v values' static
  /// scales). The executor calls it when an Attention op's prefill and decode units differ, before
  /// the op runs on the unit that lacks rows. Counted as transfers in `stats`.
  virtual int kv_rows(size_t i, int64_t pos0, int64_t T, float* k, float* v, bool write, std::string* err) = 0;

  UnitStats stats;
};

/// The OpenCL backend (runtime-lite/src/opencl/), or nullptr with *err saying why: built without
/// OpenCL ("this runtime was built without OpenCL (KERF_OPENCL=OFF)"), no platform / GPU device, or
/// the device named by the environment variable KERF_OPENCL_DEVICE ("PLATFORM_INDEX:DEVICE_INDEX",
/// or a substring of the device name) not found. Never a silent fallback.
std::unique_ptr<DeviceBackend> make_gpu_backend(std::string* err);

/// The integer-only NPU reference backend (npu.cpp). Reads the static activation scales from the
/// metadata key "npu.act_scales" in prepare().
std::unique_ptr<DeviceBackend> make_npu_backend(std::string* err);

/// An asynchronous front for a synchronous unit (async_unit.cpp): run() queues the op on the unit's
/// own thread and returns; upload / download / finish wait for the queue first. The executor gives
/// it to the NPU reference so that CPU ops independent of an NPU op run meanwhile (the OpenCL
/// backend is asynchronous by itself). nullptr when `inner` is null or memory runs out.
std::unique_ptr<DeviceBackend> make_async(std::unique_ptr<DeviceBackend> inner);

}  // namespace kerf::rt
