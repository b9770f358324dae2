#include "daemon/service/request_limits.h"

#include "catch2/catch.hpp"
#include "wsync/v1/wsync.pb.h"

namespace wsync::service {
namespace {

TEST_CASE("an oversized string anywhere in a request is refused, quoting only a prefix") {
  v1::RegisterShardsRequest req;
  req.set_model_id("m");
  auto* b = req.add_buffers();
  b->set_name("w");
  CHECK(CheckRequestLimits(req, 1024, 4096).ok());

  b->add_pieces()->set_tensor(std::string(100000, 'x'));
  absl::Status s = CheckRequestLimits(req, 1024, 4096);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(s.message()), Catch::StartsWith("RegisterShardsRequest.buffers[0].pieces[0].tensor is "
                                                         "100000 bytes long; the limit is 1024"));
  CHECK(s.message().size() < 200);

  v1::RegisterModelRequest model;
  model.set_model_id(std::string(100000, 'm'));
  s = CheckRequestLimits(model, 1024, 4096);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message().size() < 200);

  v1::RegisterShardsRequest handle;
  handle.add_buffers()->mutable_memory()->mutable_cuda_ipc()->set_ipc_handle(std::string(5000, '\0'));
  CHECK(CheckRequestLimits(handle, 1024, 4096).code() == absl::StatusCode::kInvalidArgument);
  CHECK(CheckRequestLimits(handle, 1024, 8192).ok());
}

}  // namespace
}  // namespace wsync::service
