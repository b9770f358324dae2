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

absl::StatusOr<std::unique_ptr<Transfer>> Communicator::StartChain(void* data, size_t bytes,
                                                                   const std::vector<int>& chain,
                                                                   uint32_t tag, size_t) {
  auto me = std::find(chain.begin(), chain.end(), rank());
  if (chain.size() < 2 || me == chain.end()) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank(), " is not in the transfer chain [",
                                                   absl::StrJoin(chain, ", "), "] of tag ", tag));
  }
  const size_t pos = me - chain.begin();
  absl::Status s;
  if (pos > 0) s = Exchange({{P2P::Kind::kRecv, data, bytes, chain[pos - 1], tag}});
  if (s.ok() && pos + 1 < chain.size()) s = Exchange({{P2P::Kind::kSend, data, bytes, chain[pos + 1], tag}});
  return std::unique_ptr<Transfer>(new DoneTransfer(std::move(s)));
}

}  // namespace wsync::transport
