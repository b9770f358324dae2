#ifndef WSYNC_TESTS_TESTING_MODEL_PROTO_H_
#define WSYNC_TESTS_TESTING_MODEL_PROTO_H_

#include <string>

#include "daemon/layout/model_config.h"
#include "wsync/v1/wsync.pb.h"

namespace wsync::testing {

// A RegisterModel request for `config` (every field the proto carries),
// with no session id and no adapters.
v1::RegisterModelRequest ModelRequest(const std::string& model_id, const layout::ModelConfig& config);

}  // namespace wsync::testing

#endif  // WSYNC_TESTS_TESTING_MODEL_PROTO_H_
