#include "daemon/common/metrics.h"

#include <cmath>
#include <cstdlib>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/mutex.h"

namespace wsync {
namespace {

enum class Type { kCounter, kHistogram };

struct Family {
  const char* name;
  Type type;
  const char* help;
  std::vector<double> buckets;  // histograms: upper bounds, ascending
};

// Latencies from 1 ms to about 20 min; throughput from 1 MB/s to 1 TB/s.
std::vector<double> Seconds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200};
}
std::vector<double> BytesPerSecond() {
  std::vector<double> b;
  for (double v = 1e6; v <= 1e12; v *= 10) {
    b.push_back(v);
    b.push_back(2.5 * v);
    b.push_back(5 * v);
  }
  return b;
}

const std::vector<Family>& Families() {
  static const auto* f = new std::vector<Family>{
      {"wsync_syncs_total", Type::kCounter,
       "Syncs this daemon ran or coordinated, by model and outcome (ok, or the error code in lower case).", {}},
      {"wsync_sync_duration_seconds", Type::kHistogram, "Wall time of syncs that committed, by model.", Seconds()},
      {"wsync_sync_phase_duration_seconds", Type::kHistogram,
       "Wall time of each phase (plan, transfer, verify, commit) of syncs that committed.", Seconds()},
      {"wsync_sync_bytes_total", Type::kCounter,
       "Bytes written into targets by committed syncs, by model and path (host, gpu, gloo).", {}},
      {"wsync_sync_transfer_bytes_per_second", Type::kHistogram,
       "Transfer throughput of committed syncs that moved bytes (bytes over the transfer phase).",
       BytesPerSecond()},
      {"wsync_watchdog_aborts_total", Type::kCounter,
       "Multi-node sync parts this daemon's watchdog aborted because the coordinator went silent.", {}},
      {"wsync_metrics_errors_total", Type::kCounter,
       "Updates of unknown metric families (a bug in wsyncd; never expected).", {}},
  };
  return *f;
}

const Family* Find(std::string_view name) {
  for (const Family& f : Families()) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrFormat("%.0f", v);
  // The shortest form that reads back as the same double.
  for (int precision = 15; precision < 17; ++precision) {
    std::string s = absl::StrFormat("%.*g", precision, v);
    if (std::strtod(s.c_str(), nullptr) == v) return s;
  }
  return absl::StrFormat("%.17g", v);
}

std::string LabelText(const MetricLabels& labels, const std::string& extra_name = "",
                      const std::string& extra_value = "") {
  if (labels.empty() && extra_name.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    absl::StrAppend(&out, first ? "" : ",", k, "=\"", EscapeLabelValue(v), "\"");
    first = false;
  }
  if (!extra_name.empty()) absl::StrAppend(&out, first ? "" : ",", extra_name, "=\"", extra_value, "\"");
  return out + "}";
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

struct Histogram {
  std::vector<uint64_t> counts;  // per bucket, not cumulative
  double sum = 0;
  uint64_t count = 0;
};

class MetricsImpl : public Metrics {
 public:
  void Add(std::string_view name, const MetricLabels& labels, double value) override {
    const Family* f = Find(name);
    wsync::MutexLock lock(&mu_);
    if (f == nullptr || f->type != Type::kCounter || !(value >= 0)) {
      counters_["wsync_metrics_errors_total"][{}] += 1;
      return;
    }
    counters_[f->name][labels] += value;
  }

  void Observe(std::string_view name, const MetricLabels& labels, double value) override {
    const Family* f = Find(name);
    wsync::MutexLock lock(&mu_);
    if (f == nullptr || f->type != Type::kHistogram || std::isnan(value)) {
      counters_["wsync_metrics_errors_total"][{}] += 1;
      return;
    }
    Histogram& h = histograms_[f->name][labels];
    if (h.counts.empty()) h.counts.assign(f->buckets.size(), 0);
    for (size_t i = 0; i < f->buckets.size(); ++i) {
      if (value <= f->buckets[i]) {
        h.counts[i] += 1;
        break;
      }
    }
    h.sum += value;
    h.count += 1;
  }

  void Render(std::string* out) const override {
    wsync::MutexLock lock(&mu_);
    for (const Family& f : Families()) {
      absl::StrAppend(out, "# HELP ", f.name, " ", EscapeHelp(f.help), "\n# TYPE ", f.name, " ",
                      f.type == Type::kCounter ? "counter" : "histogram", "\n");
      if (f.type == Type::kCounter) {
        auto it = counters_.find(f.name);
        if (it == counters_.end()) {
          // A counter without labels exists from the start at 0.
          if (std::string_view(f.name) == "wsync_watchdog_aborts_total" ||
              std::string_view(f.name) == "wsync_metrics_errors_total") {
            absl::StrAppend(out, f.name, " 0\n");
          }
          continue;
        }
        for (const auto& [labels, v] : it->second) absl::StrAppend(out, f.name, LabelText(labels), " ", Number(v), "\n");
        continue;
      }
      auto it = histograms_.find(f.name);
      if (it == histograms_.end()) continue;
      for (const auto& [labels, h] : it->second) {
        uint64_t cumulative = 0;
        for (size_t i = 0; i < f.buckets.size(); ++i) {
          cumulative += h.counts[i];
          absl::StrAppend(out, f.name, "_bucket", LabelText(labels, "le", Number(f.buckets[i])), " ", cumulative,
                          "\n");
        }
        absl::StrAppend(out, f.name, "_bucket", LabelText(labels, "le", "+Inf"), " ", h.count, "\n");
        absl::StrAppend(out, f.name, "_sum", LabelText(labels), " ", Number(h.sum), "\n");
        absl::StrAppend(out, f.name, "_count", LabelText(labels), " ", h.count, "\n");
      }
    }
  }

 private:
  mutable wsync::Mutex mu_;
  std::map<std::string, std::map<MetricLabels, double>> counters_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::map<MetricLabels, Histogram>> histograms_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<Metrics> Metrics::Create() { return std::make_unique<MetricsImpl>(); }

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void RenderGauge(std::string_view name, std::string_view help,
                 const std::vector<std::pair<MetricLabels, double>>& samples, std::string* out) {
  const std::string n(name);
  absl::StrAppend(out, "# HELP ", n, " ", EscapeHelp(help), "\n# TYPE ", n, " gauge\n");
  for (const auto& [labels, v] : samples) absl::StrAppend(out, n, LabelText(labels), " ", Number(v), "\n");
}

}  // namespace wsync
