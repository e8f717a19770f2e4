// kerf distill: data parallelism over c10d (TCPStore rendezvous) + Gloo. See distill/dist.h.
//
// Debian's LibTorch 1.13 is built with Gloo (c10d symbols in libtorch_cpu.so, libgloo.so.0 beside
// it); ProcessGroupGloo.hpp is compiled only under USE_C10D_GLOO and needs the gloo headers
// (Debian package libgloo-dev, the same Gloo snapshot LibTorch was built against).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif

#include "distill/dist.h"
#include "distill/dist_torch.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <signal.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>

namespace kerf::distill {

struct DataParallel::Impl {
  DistConfig cfg;
  std::chrono::milliseconds timeout{0};
  c10::intrusive_ptr<c10d::Store> store;             // null when world_size == 1
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;  // null when world_size == 1

  std::string describe() const {
    if (cfg.world_size == 1) return "single process";
    return cfg.master_addr + ":" + std::to_string(cfg.master_port) + ", rank " + std::to_string(cfg.rank) +
           " of " + std::to_string(cfg.world_size);
  }
};

namespace {

/// A LibTorch / Gloo exception's message without the C++ backtrace c10::Error appends.
std::string exception_text(const std::exception& e) {
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

/// Strict decimal integer in [lo, hi]; nullopt-like failure reported by the caller.
bool parse_int(const char* s, long long lo, long long hi, long long* out) {
  if (s == nullptr || *s == '\0') return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') return false;
  // strtoll accepts leading spaces and '+': refuse them, the value must be plain digits.
  if (!(s[0] == '-' || (s[0] >= '0' && s[0] <= '9'))) return false;
  if (v < lo || v > hi) return false;
  *out = v;
  return true;
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : nullptr;
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr == "::1" || addr.rfind("127.", 0) == 0;
}

/// The Gloo transport devices: GLOO_SOCKET_IFNAME (comma-separated interfaces) if set, as in
/// PyTorch; the master's address when it is a loopback address (every rank on this host); otherwise
/// this host's name (c10d falls back to loopback if it does not resolve to a bindable address).
std::vector<std::shared_ptr<::gloo::transport::Device>> make_devices(const DistConfig& cfg) {
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
  if (const char* ifnames = env("GLOO_SOCKET_IFNAME")) {
    std::string_view rest(ifnames);
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string name(rest.substr(0, comma));
      if (!name.empty()) devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  if (devices.empty()) {
    if (is_loopback(cfg.master_addr))
      devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(cfg.master_addr));
    else
      devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return devices;
}

template <class T>
Status allreduce_raw(DataParallel::Impl& impl, T* data, size_t n, const char* what) {
  if (impl.cfg.world_size == 1 || n == 0) return Status::Ok();
  if (data == nullptr) return InvalidArgument(std::string("allreduce_sum(") + what + "): null buffer");
  try {
    c10::NoGradGuard no_grad;
    constexpr auto dtype = std::is_same<T, float>::value ? at::kFloat : at::kDouble;
    std::vector<at::Tensor> tensors{
        at::from_blob(data, {static_cast<int64_t>(n)}, at::TensorOptions().dtype(dtype))};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp(c10d::ReduceOp::SUM);
    opts.timeout = impl.timeout;
    auto work = impl.group->allreduce(tensors, opts);
    work->wait();
    return Status::Ok();
  } catch (const std::exception& e) {
    return IoError("data-parallel allreduce_sum(" + std::string(what) + " x " + std::to_string(n) + ") over " +
                   impl.describe() + " failed: " + exception_text(e));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------- config

Result<DistConfig> dist_config_from_env() {
  DistConfig cfg;
  long long v = 0;
  const char* world = env("WORLD_SIZE");
  if (world != nullptr) {
    if (!parse_int(world, 1, 1 << 20, &v))
      return InvalidArgument(std::string("WORLD_SIZE='") + world + "' is not an integer in [1, 1048576]");
    cfg.world_size = static_cast<int>(v);
  }
  const char* rank = env("RANK");
  if (rank != nullptr) {
    if (!parse_int(rank, 0, (1 << 20) - 1, &v))
      return InvalidArgument(std::string("RANK='") + rank + "' is not a non-negative integer");
    cfg.rank = static_cast<int>(v);
  } else if (cfg.world_size > 1) {
    return InvalidArgument("RANK is not set but WORLD_SIZE=" + std::to_string(cfg.world_size));
  }
  if (cfg.rank >= cfg.world_size)
    return InvalidArgument("RANK=" + std::to_string(cfg.rank) + " is not below WORLD_SIZE=" +
                           std::to_string(cfg.world_size) + (world ? "" : " (WORLD_SIZE not set)"));
  if (cfg.world_size == 1) return cfg;

  const char* addr = env("MASTER_ADDR");
  if (addr == nullptr)
    return InvalidArgument("MASTER_ADDR is not set but WORLD_SIZE=" + std::to_string(cfg.world_size));
  cfg.master_addr = addr;
  const char* port = env("MASTER_PORT");
  if (port == nullptr)
    return InvalidArgument("MASTER_PORT is not set but WORLD_SIZE=" + std::to_string(cfg.world_size));
  if (!parse_int(port, 1, 65535, &v))
    return InvalidArgument(std::string("MASTER_PORT='") + port + "' is not a port number in [1, 65535]");
  cfg.master_port = static_cast<int>(v);
  return cfg;
}

// ---------------------------------------------------------------------------------- DataParallel

DataParallel::DataParallel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DataParallel::~DataParallel() {
  if (!impl_) return;
  try {
    impl_->group.reset();  // the group uses the store: release it first
    impl_->store.reset();
  } catch (...) {
  }
}

Result<std::unique_ptr<DataParallel>> DataParallel::from_env(int timeout_seconds) {
  KERF_ASSIGN_OR_RETURN(DistConfig cfg, dist_config_from_env());
  return create(cfg, timeout_seconds);
}

Result<std::unique_ptr<DataParallel>> DataParallel::create(const DistConfig& cfg, int timeout_seconds) {
  if (timeout_seconds <= 0) return InvalidArgument("data-parallel timeout must be positive, got " + std::to_string(timeout_seconds));
  if (cfg.world_size < 1) return InvalidArgument("world size must be >= 1, got " + std::to_string(cfg.world_size));
  if (cfg.rank < 0 || cfg.rank >= cfg.world_size)
    return InvalidArgument("rank " + std::to_string(cfg.rank) + " is not in [0, " + std::to_string(cfg.world_size) + ")");
  auto impl = std::make_unique<Impl>();
  impl->cfg = cfg;
  impl->timeout = std::chrono::milliseconds(int64_t{timeout_seconds} * 1000);
  if (cfg.world_size == 1) return std::unique_ptr<DataParallel>(new DataParallel(std::move(impl)));

  if (cfg.master_addr.empty()) return InvalidArgument("data-parallel rendezvous: empty master address");
  if (cfg.master_port < 1 || cfg.master_port > 65535)
    return InvalidArgument("data-parallel rendezvous: master port " + std::to_string(cfg.master_port) +
                           " is not in [1, 65535]");
  // Gloo writes to sockets with writev(): a peer that dies would kill this process with SIGPIPE.
  // Ignore it (as Python does), so the failure comes back as an error from the collective.
  struct sigaction old {};
  if (::sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) std::signal(SIGPIPE, SIG_IGN);

  std::string stage = "cannot join the TCPStore";
  const auto deadline = std::chrono::steady_clock::now() + impl->timeout;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(cfg.master_port);
    so.isServer = cfg.rank == 0;
    so.numWorkers = static_cast<size_t>(cfg.world_size);
    so.waitWorkers = false;  // counted below, with an error when a rank is missing
    so.timeout = impl->timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(cfg.master_addr, so);
    // TCPStore's own wait for the workers gives up silently at the timeout; count the ranks that
    // joined ourselves so that a missing peer is reported as such.
    stage = "waiting for the other ranks";
    const std::string joined_key = "kerf/data_parallel/joined";
    int64_t joined = impl->store->add(joined_key, 1);
    while (joined < cfg.world_size) {
      if (std::chrono::steady_clock::now() >= deadline) {
        const std::string where = impl->describe();
        impl->store.reset();
        return IoError("data-parallel rendezvous " + where + ": only " + std::to_string(joined) + " of " +
                       std::to_string(cfg.world_size) + " ranks joined within " + std::to_string(timeout_seconds) +
                       " s");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      joined = impl->store->add(joined_key, 0);
    }
    stage = "cannot create the Gloo device";
    auto opts = c10d::ProcessGroupGloo::Options::create(impl->timeout);
    opts->devices = make_devices(cfg);
    stage = "cannot connect the Gloo process group";
    impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, cfg.rank, cfg.world_size, opts);
  } catch (const std::exception& e) {
    const std::string where = impl->describe();
    impl->group.reset();
    impl->store.reset();
    return IoError("data-parallel rendezvous " + where + ": " + stage + " (timeout " +
                   std::to_string(timeout_seconds) + " s): " + exception_text(e));
  }
  return std::unique_ptr<DataParallel>(new DataParallel(std::move(impl)));
}

int DataParallel::rank() const { return impl_->cfg.rank; }
int DataParallel::world_size() const { return impl_->cfg.world_size; }
std::string DataParallel::describe() const { return impl_->describe(); }

Status DataParallel::allreduce_sum(std::vector<float>& data) { return allreduce_raw(*impl_, data.data(), data.size(), "float"); }
Status DataParallel::allreduce_sum(std::vector<double>& data) { return allreduce_raw(*impl_, data.data(), data.size(), "double"); }
Status DataParallel::allreduce_sum(float* data, size_t n) { return allreduce_raw(*impl_, data, n, "float"); }
Status DataParallel::allreduce_sum(double* data, size_t n) { return allreduce_raw(*impl_, data, n, "double"); }

Status DataParallel::barrier() {
  if (impl_->cfg.world_size == 1) return Status::Ok();
  try {
    c10d::BarrierOptions opts;
    opts.timeout = impl_->timeout;
    impl_->group->barrier(opts)->wait();
    return Status::Ok();
  } catch (const std::exception& e) {
    return IoError("data-parallel barrier over " + impl_->describe() + " failed: " + exception_text(e));
  }
}

// ---------------------------------------------------------------------------------- ATen

Status allreduce_sum(DataParallel& dp, const std::vector<at::Tensor>& tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const std::string what = "allreduce_sum: tensor " + std::to_string(i);
    if (!t.defined()) return InvalidArgument(what + " is undefined");
    if (t.layout() != at::kStrided) return InvalidArgument(what + " is not a dense (strided) tensor");
    if (!t.device().is_cpu()) return InvalidArgument(what + " is not on the CPU (" + t.device().str() + ")");
    if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble)
      return InvalidArgument(what + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                             ", not float32 / float64");
  }
  if (dp.world_size() == 1) return Status::Ok();
  try {
    c10::NoGradGuard no_grad;
    for (auto dtype : {at::kFloat, at::kDouble}) {
      std::vector<at::Tensor> group;
      for (const auto& t : tensors)
        if (t.scalar_type() == dtype && t.numel() > 0) group.push_back(t);
      if (group.empty()) continue;
      // One contiguous tensor: reduce it in place. Otherwise pack, reduce, unpack.
      if (group.size() == 1 && group[0].is_contiguous()) {
        at::Tensor& t = group[0];
        Status st = dtype == at::kFloat ? dp.allreduce_sum(t.data_ptr<float>(), static_cast<size_t>(t.numel()))
                                        : dp.allreduce_sum(t.data_ptr<double>(), static_cast<size_t>(t.numel()));
        KERF_RETURN_IF_ERROR(st);
        continue;
      }
      std::vector<at::Tensor> flat;
      flat.reserve(group.size());
      for (const auto& t : group) flat.push_back(t.reshape({-1}));
      at::Tensor buf = at::cat(flat);
      Status st = dtype == at::kFloat ? dp.allreduce_sum(buf.data_ptr<float>(), static_cast<size_t>(buf.numel()))
                                      : dp.allreduce_sum(buf.data_ptr<double>(), static_cast<size_t>(buf.numel()));
      KERF_RETURN_IF_ERROR(st);
      int64_t off = 0;
      for (auto& t : group) {
        t.copy_(buf.narrow(0, off, t.numel()).view(t.sizes()));
        off += t.numel();
      }
    }
    return Status::Ok();
  } catch (const std::exception& e) {
    return Internal("allreduce_sum over tensors (" + dp.describe() + "): " + exception_text(e));
  }
}

}  // namespace kerf::distill
