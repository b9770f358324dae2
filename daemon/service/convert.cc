#include "daemon/service/convert.h"

namespace wsync::service {

void ToProto(const core::DaemonStatus& in, v1::GetStatusResponse* out) {
  out->Clear();
  out->set_daemon_id(in.daemon_id);
  out->set_version(in.version);
  out->set_build(in.build);
  out->set_uptime_s(in.uptime_s);
  out->set_pid(in.pid);
  out->set_serving(in.serving);
  for (const core::EndpointInfo& e : in.endpoints) {
    v1::Endpoint* p = out->add_endpoints();
    p->set_kind(e.kind);
    p->set_address(e.address);
    p->set_tls(e.tls);
  }
  for (const std::string& g : in.gpus) out->add_gpus(g);
  for (const core::ModelInfo& m : in.models) {
    v1::ModelStatus* p = out->add_models();
    p->set_model_id(m.model_id);
    p->set_num_tensors(m.num_tensors);
    p->set_total_bytes(m.total_bytes);
  }
  for (const core::JobInfo& j : in.jobs) {
    v1::JobStatus* p = out->add_jobs();
    p->set_job_id(j.job_id);
    p->set_model_id(j.model_id);
    p->set_version(j.version);
    p->set_elapsed_ms(j.elapsed_ms);
  }
  for (const core::SessionInfo& s : in.sessions) {
    v1::SessionStatus* p = out->add_sessions();
    p->set_session_id(s.session_id);
    p->set_client_name(s.client_name);
    p->set_pid(s.pid);
  }
}

void ToProto(const std::vector<core::ModelInfo>& in, v1::ListModelsResponse* out) {
  out->Clear();
  for (const core::ModelInfo& m : in) {
    v1::ModelSummary* p = out->add_models();
    p->set_model_id(m.model_id);
    p->set_num_tensors(m.num_tensors);
    p->set_total_bytes(m.total_bytes);
  }
}

}  // namespace wsync::service
