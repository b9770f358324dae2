#include "daemon/transport/wire_pipeline.h"

#include <algorithm>
#include <deque>
#include <memory>

#include "absl/strings/str_cat.h"

namespace wsync::transport {

absl::Status RunWirePipeline(Communicator* comm, int rank, const std::vector<WireBucket>& buckets,
                             const std::vector<char*>& buffers, uint64_t chunk_bytes,
                             const WirePipelineHooks& hooks) {
  if (buffers.empty()) return absl::InvalidArgumentError("wire pipeline: no buffers");
  struct InFlight {
    size_t bucket;
    char* buf;
    std::unique_ptr<Transfer> transfer;  // null: nothing crosses ranks
  };
  std::deque<InFlight> in_flight;
  std::vector<char*> free_bufs(buffers.rbegin(), buffers.rend());
  auto wire_error = [&](size_t i, const absl::Status& s) {
    return hooks.on_wire_error ? hooks.on_wire_error(i, s)
                               : absl::Status(s.code(), absl::StrCat("wire bucket ", i, ": ", s.message()));
  };
  auto finish_oldest = [&]() -> absl::Status {
    InFlight f = std::move(in_flight.front());
    in_flight.pop_front();
    free_bufs.push_back(f.buf);
    if (f.transfer) {
      absl::Status s = f.transfer->Wait();
      f.transfer.reset();
      if (!s.ok()) return wire_error(f.bucket, s);
    }
    return hooks.drain(f.bucket, f.buf);
  };
  auto run = [&]() -> absl::Status {
    for (size_t i = 0; i < buckets.size(); ++i) {
      const WireBucket& b = buckets[i];
      if (std::find(b.chain.begin(), b.chain.end(), rank) == b.chain.end()) continue;
      if (hooks.before) {
        if (absl::Status s = hooks.before(i); !s.ok()) return s;
      }
      if (free_bufs.empty()) {
        if (absl::Status s = finish_oldest(); !s.ok()) return s;
      }
      char* buf = free_bufs.back();
      free_bufs.pop_back();
      in_flight.push_back({i, buf, nullptr});
      if (b.chain[0] == rank) {
        if (absl::Status s = hooks.fill(i, buf); !s.ok()) return s;
      }
      if (b.chain.size() > 1) {
        if (comm == nullptr) return absl::InternalError(absl::StrCat("wire bucket ", i, ": no communicator"));
        auto x = comm->StartChain(buf, b.bytes, b.chain, static_cast<uint32_t>(i), chunk_bytes);
        if (!x.ok()) return wire_error(i, x.status());
        in_flight.back().transfer = std::move(*x);
      }
      if (in_flight.size() >= buffers.size()) {
        if (absl::Status s = finish_oldest(); !s.ok()) return s;
      }
    }
    while (!in_flight.empty()) {
      if (absl::Status s = finish_oldest(); !s.ok()) return s;
    }
    return absl::OkStatus();
  };
  absl::Status status = run();
  // Transfers still posted would never be drained: end them now (their
  // destructors wait) rather than at the communicator's timeout. The
  // communicator stays poisoned, so no later pipeline reuses it.
  const bool posted = std::any_of(in_flight.begin(), in_flight.end(),
                                  [](const InFlight& f) { return f.transfer != nullptr; });
  if (posted) comm->Abort(absl::StrCat("the wire pipeline stopped: ", status.message()));
  in_flight.clear();
  return status;
}

}  // namespace wsync::transport
