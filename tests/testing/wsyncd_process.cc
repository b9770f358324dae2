#include "tests/testing/wsyncd_process.h"

#include "absl/strings/str_cat.h"

namespace wsync::testing {

absl::StatusOr<std::unique_ptr<WsyncdProcess>> WsyncdProcess::Start(const std::string& id, const std::string& dir,
                                                                    const std::vector<std::string>& extra) {
  std::unique_ptr<WsyncdProcess> d(new WsyncdProcess);
  d->id_ = id;
  d->socket_ = dir + "/" + id + ".sock";
  std::vector<std::string> argv = {Runfile("daemon/wsyncd"), "--socket", d->socket_, "--daemon-id", id,
                                   "--listen", "127.0.0.1:0", "--heartbeat-ms", "200",
                                   "--peer-timeout-ms", "3000", "--grace-period-ms", "1000"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  d->proc_ = std::make_unique<Process>(argv);
  client::ConnectOptions o;
  o.socket = d->socket_;
  o.connect_timeout_ms = 200;
  const bool up = WaitFor([&] { return !d->proc_->Running() || client::Connect(o).ok(); }, 20000);
  if (!up || !d->proc_->Running()) {
    return absl::UnavailableError(absl::StrCat("wsyncd '", id, "' did not come up; its stderr:\n", d->proc_->Stderr()));
  }
  auto c = d->Attach("probe");
  if (!c.ok()) return c.status();
  auto st = (*c)->GetStatus();
  if (!st.ok()) return st.status();
  for (const auto& e : st->endpoints()) {
    if (e.kind() == "tcp") d->address_ = e.address();
  }
  if (d->address_.empty()) return absl::InternalError(absl::StrCat("wsyncd '", id, "' reports no TCP endpoint"));
  return d;
}

absl::StatusOr<std::unique_ptr<client::Client>> WsyncdProcess::Attach(const std::string& name) const {
  client::ConnectOptions o;
  o.socket = socket_;
  return client::Client::Attach(o, name, nullptr);
}

}  // namespace wsync::testing
