#include "daemon/service/status_mapping.h"

#include <catch2/catch.hpp>

namespace wsync::service {
namespace {

TEST_CASE("every absl code maps to the gRPC code of the same meaning") {
  struct Case {
    absl::Status in;
    grpc::StatusCode want;
  };
  const Case cases[] = {
      {absl::InvalidArgumentError("m"), grpc::StatusCode::INVALID_ARGUMENT},
      {absl::NotFoundError("m"), grpc::StatusCode::NOT_FOUND},
      {absl::AlreadyExistsError("m"), grpc::StatusCode::ALREADY_EXISTS},
      {absl::FailedPreconditionError("m"), grpc::StatusCode::FAILED_PRECONDITION},
      {absl::DeadlineExceededError("m"), grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::AbortedError("m"), grpc::StatusCode::ABORTED},
      {absl::CancelledError("m"), grpc::StatusCode::CANCELLED},
      {absl::PermissionDeniedError("m"), grpc::StatusCode::PERMISSION_DENIED},
      {absl::UnauthenticatedError("m"), grpc::StatusCode::UNAUTHENTICATED},
      {absl::ResourceExhaustedError("m"), grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::UnavailableError("m"), grpc::StatusCode::UNAVAILABLE},
      {absl::UnimplementedError("m"), grpc::StatusCode::UNIMPLEMENTED},
      {absl::InternalError("m"), grpc::StatusCode::INTERNAL},
      {absl::OutOfRangeError("m"), grpc::StatusCode::OUT_OF_RANGE},
      {absl::DataLossError("m"), grpc::StatusCode::DATA_LOSS},
      {absl::UnknownError("m"), grpc::StatusCode::UNKNOWN},
  };
  for (const Case& c : cases) {
    grpc::Status g = ToGrpcStatus(c.in);
    CHECK(g.error_code() == c.want);
    CHECK(g.error_message() == "m");
    CHECK(FromGrpcStatus(g) == c.in);
  }
  CHECK(ToGrpcStatus(absl::OkStatus()).ok());
  CHECK(FromGrpcStatus(grpc::Status::OK).ok());
}

}  // namespace
}  // namespace wsync::service
