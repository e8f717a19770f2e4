// kerf distill: data-parallel distillation over torch.distributed's C++ core (c10d) with Gloo.
//
// Each process (rank) trains on its shard of the batches and the ranks sum their gradients (and
// loss / token counters) with allreduce_sum before every optimizer step, so all ranks take the same
// step. Rendezvous is torchrun-style, from the environment:
//   WORLD_SIZE   number of processes; absent or 1 = a single-process group (no sockets, every
//                collective is the identity)
//   RANK         this process, 0 <= RANK < WORLD_SIZE (required when WORLD_SIZE > 1)
//   MASTER_ADDR  host of rank 0 (required when WORLD_SIZE > 1); the Gloo device is bound to the
//                interface that reaches it
//   MASTER_PORT  TCP port of the c10d TCPStore that rank 0 serves (required when WORLD_SIZE > 1)
//   LOCAL_RANK   ignored (CPU only)
//   GLOO_SOCKET_IFNAME  optional, as in PyTorch: the network interface(s) (comma-separated) Gloo
//                binds to. Without it Gloo binds to MASTER_ADDR when that is a loopback address
//                (all ranks on this host), else to the address this host's name resolves to
//                (c10d falls back to loopback when that cannot be bound).
// so `torchrun --nproc_per_node=2 kerf ...` or a plain `RANK=0 WORLD_SIZE=2 ... kerf ... &` per
// process both work. Collectives are CPU tensors reduced by Gloo.
//
// Header is torch-free (pimpl). LibTorch / Gloo exceptions never cross this API: they come back as
// a Status naming the rendezvous ("127.0.0.1:29500, rank 1 of 2") and the operation.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "compiler/ir/status.h"

namespace kerf::distill {

/// The rendezvous a DataParallel group is built from.
struct DistConfig {
  int rank = 0;
  int world_size = 1;
  std::string master_addr;  ///< unused when world_size == 1
  int master_port = 0;      ///< 1..65535; unused when world_size == 1
};

/// Parses RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (see the top comment). Errors:
/// InvalidArgument naming the variable and its value (not a decimal integer, out of range,
/// RANK >= WORLD_SIZE, a required variable missing).
Result<DistConfig> dist_config_from_env();

class DataParallel {
 public:
  /// torchrun-style environment rendezvous (dist_config_from_env, then create).
  static Result<std::unique_ptr<DataParallel>> from_env(int timeout_seconds = 60);

  /// Joins the group described by `cfg`: rank 0 serves a c10d TCPStore on master_port and waits for
  /// the other ranks; every rank then builds a Gloo process group on that store. Blocks until all
  /// world_size ranks have joined or `timeout_seconds` pass (also the timeout of every later
  /// collective). Errors: InvalidArgument (bad cfg or timeout); IoError naming the rendezvous when
  /// it cannot be formed (port in use, a rank that never arrives, address does not resolve).
  /// With world_size > 1 it sets SIGPIPE to SIG_IGN when it was SIG_DFL (as Python does): Gloo
  /// writes to sockets with writev(), and a dead peer must come back as an error, not kill us.
  static Result<std::unique_ptr<DataParallel>> create(const DistConfig& cfg, int timeout_seconds = 60);

  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const;
  int world_size() const;
  /// "127.0.0.1:29500, rank 1 of 2" (or "single process").
  std::string describe() const;

  /// Sum over ranks, in place. Every rank calls the collectives in the same order with buffers of
  /// equal length and type (a mismatch is undefined: Gloo may fail, time out or hang until the
  /// timeout). Two-rank sums are exactly a+b on every rank; with more ranks the order of additions
  /// is Gloo's, but every rank receives the same bits. Empty buffers return at once. Errors:
  /// IoError naming the rendezvous and the operation (peer gone, timeout).
  Status allreduce_sum(std::vector<float>& data);
  Status allreduce_sum(std::vector<double>& data);
  Status allreduce_sum(float* data, size_t n);
  Status allreduce_sum(double* data, size_t n);
  /// Returns when every rank has called barrier(). Errors as allreduce_sum.
  Status barrier();

  struct Impl;

 private:
  explicit DataParallel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kerf::distill
