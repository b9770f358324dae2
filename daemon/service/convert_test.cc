#include "daemon/service/convert.h"

#include <cmath>
#include <limits>

#include "catch2/catch.hpp"

namespace wsync::service {
namespace {

TEST_CASE("every enum value round-trips through its one conversion") {
  for (core::Role r : {core::Role::kSource, core::Role::kTarget}) {
    auto back = RoleFromProto(ToProto(r), "f");
    REQUIRE(back.ok());
    CHECK(*back == r);
  }
  for (core::UpdateMode m : {core::UpdateMode::kStaged, core::UpdateMode::kInPlace}) {
    auto back = UpdateModeFromProto(ToProto(m), "f");
    REQUIRE(back.ok());
    CHECK(*back == m);
  }
  for (core::LoraMode m : {core::LoraMode::kNone, core::LoraMode::kMerge, core::LoraMode::kAdapterOnly,
                           core::LoraMode::kUnmerge}) {
    auto back = LoraModeFromProto(ToProto(m), "f");
    REQUIRE(back.ok());
    CHECK(*back == m);
  }
  for (core::LoraConvention c : {core::LoraConvention::kPeft, core::LoraConvention::kDeepSpeed}) {
    auto back = LoraConventionFromProto(ToProto(c), "f");
    REQUIRE(back.ok());
    CHECK(*back == c);
  }
  for (layout::DType d : {layout::DType::kF32, layout::DType::kBF16, layout::DType::kF16, layout::DType::kF8E4M3}) {
    auto back = DTypeFromProto(ToProto(d), "f");
    REQUIRE(back.ok());
    CHECK(*back == d);
  }
}

TEST_CASE("every proto enum value maps to exactly what the proto documents") {
  // Each named proto value: either a core value or a documented default.
  for (int i = v1::Role_MIN; i <= v1::Role_MAX; ++i) {
    auto r = RoleFromProto(static_cast<v1::Role>(i), "f");
    CHECK(r.ok() == (i != v1::ROLE_UNSPECIFIED));
    if (r.ok()) CHECK(ToProto(*r) == i);
  }
  CHECK(*UpdateModeFromProto(v1::UPDATE_MODE_UNSPECIFIED, "f") == core::UpdateMode::kStaged);
  CHECK(*LoraModeFromProto(v1::LORA_MODE_UNSPECIFIED, "f") == core::LoraMode::kNone);
  CHECK(*LoraConventionFromProto(v1::LORA_CONVENTION_UNSPECIFIED, "f") == core::LoraConvention::kPeft);
  CHECK(DTypeFromProto(v1::DTYPE_UNSPECIFIED, "f").status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("enum values outside the proto are INVALID_ARGUMENT naming the field, never a default") {
  for (int bad : {-1, 99, 1 << 20}) {
    auto lm = LoraModeFromProto(static_cast<v1::LoraMode>(bad), "model 'm' sync");
    CHECK(lm.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(lm.status().message()), Catch::Contains("model 'm' sync") && Catch::Contains("LoRA mode"));
    CHECK(RoleFromProto(static_cast<v1::Role>(bad), "f").status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(UpdateModeFromProto(static_cast<v1::UpdateMode>(bad), "f").status().code() ==
          absl::StatusCode::kInvalidArgument);
    CHECK(LoraConventionFromProto(static_cast<v1::LoraConvention>(bad), "f").status().code() ==
          absl::StatusCode::kInvalidArgument);
    CHECK(DTypeFromProto(static_cast<v1::DType>(bad), "f").status().code() == absl::StatusCode::kInvalidArgument);
  }
  // Just past each enum's last value.
  CHECK_FALSE(LoraModeFromProto(static_cast<v1::LoraMode>(v1::LoraMode_MAX + 1), "f").ok());
  CHECK_FALSE(RoleFromProto(static_cast<v1::Role>(v1::Role_MAX + 1), "f").ok());
  CHECK_FALSE(UpdateModeFromProto(static_cast<v1::UpdateMode>(v1::UpdateMode_MAX + 1), "f").ok());
  CHECK_FALSE(LoraConventionFromProto(static_cast<v1::LoraConvention>(v1::LoraConvention_MAX + 1), "f").ok());
  CHECK_FALSE(DTypeFromProto(static_cast<v1::DType>(v1::DType_MAX + 1), "f").ok());
}

TEST_CASE("requests carrying unknown enum values are refused, public and peer alike") {
  v1::SyncRequest sync;
  sync.set_model_id("m");
  sync.set_version(1);
  sync.mutable_lora()->set_mode(static_cast<v1::LoraMode>(99));
  CHECK(FromProto(sync).status().code() == absl::StatusCode::kInvalidArgument);

  v1::RegisterShardsRequest reg;
  reg.set_model_id("m");
  reg.set_role(static_cast<v1::Role>(7));
  CHECK(FromProto(reg).status().code() == absl::StatusCode::kInvalidArgument);
  reg.set_role(v1::TARGET);
  reg.set_update_mode(static_cast<v1::UpdateMode>(9));
  CHECK(FromProto(reg).status().code() == absl::StatusCode::kInvalidArgument);

  v1::PlanPart part;
  part.set_transport("gloo");
  part.mutable_lora()->set_mode(static_cast<v1::LoraMode>(99));
  CHECK(FromProto(part).status().code() == absl::StatusCode::kInvalidArgument);

  part.mutable_lora()->set_mode(v1::NONE);
  part.set_transport("infiniband");
  CHECK(FromProto(part).status().code() == absl::StatusCode::kInvalidArgument);

  v1::RankAnnouncement ann;
  ann.set_model_id("m");
  ann.set_role(static_cast<v1::Role>(3));
  CHECK(FromProto(ann).status().code() == absl::StatusCode::kInvalidArgument);
  ann.set_role(v1::ROLE_UNSPECIFIED);
  CHECK(FromProto(ann).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("LoRA scaling must be finite") {
  for (double s : {std::nan(""), std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()}) {
    v1::RegisterModelRequest req;
    req.set_model_id("m");
    auto* l = req.add_lora_adapters();
    l->set_base_tensor("w");
    l->set_scaling(s);
    auto r = FromProto(req);
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("scaling") && Catch::Contains("'w'"));
  }
}

TEST_CASE("a plan's transport, its members' NCCL ability and its endpoints' GPUs cross the wire") {
  core::PlanPart part;
  part.job_id = "j";
  part.transport = core::WireTransport::kNccl;
  part.members.push_back({"g0", "g0:1", 7, "v", /*nccl=*/true});
  core::PlanEndpoint e;
  e.daemon_id = "g0";
  e.gpu_uuid = "GPU-1234";
  part.targets.push_back(e);
  v1::PlanPart wire;
  ToProto(part, &wire);
  CHECK(wire.transport() == "nccl");
  auto back = FromProto(wire);
  REQUIRE(back.ok());
  CHECK(back->transport == core::WireTransport::kNccl);
  CHECK(back->members.at(0).nccl);
  CHECK(back->targets.at(0).gpu_uuid == "GPU-1234");
  part.transport = core::WireTransport::kGloo;
  ToProto(part, &wire);
  CHECK(wire.transport() == "gloo");

  core::RankAnnouncement a;
  a.model_id = "m";
  a.gpu_uuid = "GPU-9";
  v1::RankAnnouncement wa;
  ToProto(a, &wa);
  auto ab = FromProto(wa);
  REQUIRE(ab.ok());
  CHECK(ab->gpu_uuid == "GPU-9");
}

}  // namespace
}  // namespace wsync::service
