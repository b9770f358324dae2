#ifndef WSYNC_DAEMON_COMMON_METRICS_H_
#define WSYNC_DAEMON_COMMON_METRICS_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace wsync {

// Label name/value pairs of one sample, in the family's label order.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// The counters and histograms of one daemon, rendered in the Prometheus text
// exposition format (version 0.0.4). The families are fixed (metrics.cc
// declares each with its type, help text and buckets); gauges that describe
// current state are rendered by the caller from a status snapshot with
// RenderGauge.
//
// Thread-safe: every method may be called from any thread.
class Metrics {
 public:
  static std::unique_ptr<Metrics> Create();
  virtual ~Metrics() = default;

  // Adds `value` (>= 0) to the counter family `name`, sample `labels`.
  // An unknown family or a histogram name is a programming error: it is
  // ignored and counted in wsync_metrics_errors_total.
  virtual void Add(std::string_view name, const MetricLabels& labels, double value) = 0;

  // Records one observation in the histogram family `name`.
  virtual void Observe(std::string_view name, const MetricLabels& labels, double value) = 0;

  // Appends every counter and histogram family (HELP, TYPE, samples) to *out.
  virtual void Render(std::string* out) const = 0;
};

// Appends one gauge family to *out: HELP, TYPE and one line per sample.
void RenderGauge(std::string_view name, std::string_view help,
                 const std::vector<std::pair<MetricLabels, double>>& samples, std::string* out);

// A label value escaped for the exposition format (backslash, quote, newline).
std::string EscapeLabelValue(std::string_view value);

}  // namespace wsync

#endif  // WSYNC_DAEMON_COMMON_METRICS_H_
