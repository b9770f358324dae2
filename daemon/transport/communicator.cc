#include "daemon/transport/communicator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace wsync::transport {
namespace {

class DoneTransfer final : public Transfer {
 public:
  explicit DoneTransfer(absl::Status s) : status_(std::move(s)) {}
  absl::Status Wait() override { return status_; }

 private:
  absl::Status status_;
};

}  // namespace

absl::Status CheckChain(const std::vector<int>& chain, int rank, int size, size_t chunk_bytes) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, ": bad transfer chain [", absl::StrJoin(chain, ", "), "]: ", why));
  };
  if (chain.size() < 2) return bad("it needs at least two ranks");
  if (chunk_bytes == 0) return bad("chunks of 0 bytes");
  for (int r : chain) {
    if (r < 0 || r >= size) return bad(absl::StrCat("rank ", r, " is outside the group of ", size));
    if (std::count(chain.begin(), chain.end(), r) != 1) return bad(absl::StrCat("it names rank ", r, " twice"));
  }
  if (std::find(chain.begin(), chain.end(), rank) == chain.end()) return bad("this rank is not in it");
  return absl::OkStatus();
}

std::vector<std::vector<P2P>> ChainSteps(void* data, size_t bytes, const std::vector<int>& chain, int rank,
                                         uint32_t tag, size_t chunk_bytes) {
  const size_t pos = std::find(chain.begin(), chain.end(), rank) - chain.begin();
  const int prev = pos > 0 ? chain[pos - 1] : -1;
  const int next = pos + 1 < chain.size() ? chain[pos + 1] : -1;
  const size_t chunks = (bytes + chunk_bytes - 1) / chunk_bytes;
  char* base = static_cast<char*>(data);
  auto chunk = [&](P2P::Kind kind, size_t i, int peer) {
    return P2P{kind, base + i * chunk_bytes, std::min(chunk_bytes, bytes - i * chunk_bytes), peer, tag};
  };
  std::vector<std::vector<P2P>> steps;
  const size_t n = prev < 0 || next < 0 ? chunks : (chunks == 0 ? 0 : chunks + 1);
  for (size_t j = 0; j < n; ++j) {
    std::vector<P2P> step;
    if (prev < 0) {
      step.push_back(chunk(P2P::Kind::kSend, j, next));
    } else {
      if (j < chunks) step.push_back(chunk(P2P::Kind::kRecv, j, prev));
      if (next >= 0 && j > 0) step.push_back(chunk(P2P::Kind::kSend, j - 1, next));
    }
    steps.push_back(std::move(step));
  }
  return steps;
}

absl::StatusOr<std::unique_ptr<Transfer>> Communicator::StartChain(void* data, size_t bytes,
                                                                   const std::vector<int>& chain,
                                                                   uint32_t tag, size_t chunk_bytes) {
  if (absl::Status s = CheckChain(chain, rank(), size(), chunk_bytes); !s.ok()) return s;
  absl::Status s;
  for (const std::vector<P2P>& step : ChainSteps(data, bytes, chain, rank(), tag, chunk_bytes)) {
    s = Exchange(step);
    if (!s.ok()) break;
  }
  return std::unique_ptr<Transfer>(new DoneTransfer(std::move(s)));
}

}  // namespace wsync::transport
