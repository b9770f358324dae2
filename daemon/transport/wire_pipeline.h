#ifndef WSYNC_DAEMON_TRANSPORT_WIRE_PIPELINE_H_
#define WSYNC_DAEMON_TRANSPORT_WIRE_PIPELINE_H_

// Moves a sequence of wire buckets between the ranks of a communicator
// through a fixed ring of buffers, so that filling, the wire and draining
// overlap: bucket i is filled (its source) or its receive posted (everyone
// else in its chain) before bucket i - depth + 1 is waited for and drained,
// and no bucket's data arrives before its receive is posted.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "daemon/transport/communicator.h"

namespace wsync::transport {

// One wire bucket: `bytes` from chain[0] to the other ranks of `chain`
// (communicator ranks, in forwarding order). A chain of one rank moves
// nothing across ranks; the bucket is still filled and drained.
struct WireBucket {
  uint64_t bytes = 0;
  std::vector<int> chain;
};

struct WirePipelineHooks {
  // Called on chain[0] with a free buffer: write the bucket's bytes.
  std::function<absl::Status(size_t bucket, char* buf)> fill;
  // Called on every rank of the chain, in bucket order, once the bucket is
  // in `buf` (on chain[0]: what fill wrote).
  std::function<absl::Status(size_t bucket, char* buf)> drain;
  // Called before each bucket this rank takes part in (deadlines, cancels);
  // an error stops the pipeline. Optional.
  std::function<absl::Status(size_t bucket)> before;
  // How a transport error of bucket i reads (naming the daemons behind the
  // communicator ranks). Optional.
  std::function<absl::Status(size_t bucket, const absl::Status&)> on_wire_error;
};

// Runs every bucket whose chain holds `rank`, in order, through
// `buffers` (each at least as large as the largest such bucket; their
// number is the pipeline's depth, at least 1). Chunks of `chunk_bytes`
// are forwarded along chains as they arrive. Returns the first error of a
// hook or of the wire; transfers still in flight are then aborted (Abort
// poisons the communicator) and waited for before it returns, so no
// transfer outlives `buffers`.
// `comm` (whose rank is `rank`) may be null when no chain of this rank's
// buckets has more than one rank. Not thread-safe: one caller per
// communicator.
absl::Status RunWirePipeline(Communicator* comm, int rank, const std::vector<WireBucket>& buckets,
                             const std::vector<char*>& buffers, uint64_t chunk_bytes,
                             const WirePipelineHooks& hooks);

}  // namespace wsync::transport

#endif  // WSYNC_DAEMON_TRANSPORT_WIRE_PIPELINE_H_
