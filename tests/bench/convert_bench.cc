// Conversion benchmark: `wsyncctl convert` of a ~2 GB bf16 HF checkpoint to
// vLLM TP=2, against a plain copy of the same file (read + write + fsync),
// measured in the same run with a warm page cache for both. Prints the ratio
// and the converter's peak RSS; asserts nothing.
//
//   bazel run -c opt //tests/bench:convert_bench -- [--gib 2] [--dir /tmp]
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/convert/safetensors.h"
#include "daemon/layout/model_config.h"

using namespace wsync;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double CopyFile(const std::string& from, const std::string& to) {
  double t0 = Now();
  int in = open(from.c_str(), O_RDONLY);
  int out = open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char> buf(64 << 20);
  ssize_t n;
  while ((n = read(in, buf.data(), buf.size())) > 0) {
    if (write(out, buf.data(), n) != n) std::perror("write");
  }
  fsync(out);
  close(in);
  close(out);
  return Now() - t0;
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 2;
  std::string base = "/tmp", wsyncctl = "client/cli/wsyncctl";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--gib") gib = std::atof(argv[i + 1]);
    if (a == "--dir") base = argv[i + 1];
    if (a == "--wsyncctl") wsyncctl = argv[i + 1];
  }
  char tmpl[4096];
  std::snprintf(tmpl, sizeof(tmpl), "%s/wsync-convert-bench-XXXXXX", base.c_str());
  std::string dir = mkdtemp(tmpl);
  // Llama-like model sized to about `gib` GiB in bf16.
  const int64_t layers = std::max<int64_t>(1, static_cast<int64_t>((gib * (1ull << 30) - 262e6) / 90e6));
  std::string config = absl::StrCat(
      R"({"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
          "num_attention_heads": 16, "num_key_value_heads": 4, "num_hidden_layers": )",
      layers, R"(, "vocab_size": 32000, "tie_word_embeddings": false})");
  std::ofstream(dir + "/config.json") << config;
  auto cfg = layout::ParseHfConfig(config);
  auto tensors = layout::CanonicalTensors(*cfg, layout::DType::kBF16);
  std::vector<convert::TensorInfo> infos;
  uint64_t total = 0;
  for (const auto& t : *tensors) {
    infos.push_back({t.name, layout::DType::kBF16, t.shape, 0, 0});
    total += t.shape.NumElements() * 2;
  }
  mkdir((dir + "/hf").c_str(), 0755);
  {
    auto w = convert::SafetensorsWriter::Create(dir + "/hf/model.safetensors", infos, {});
    std::vector<uint16_t> chunk(8 << 20);
    for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<uint16_t>(0x3c00 + (i * 7919) % 1024);
    for (size_t i = 0; i < infos.size(); ++i) {
      uint64_t n = infos[i].shape.NumElements() * 2;
      for (uint64_t at = 0; at < n; at += chunk.size() * 2) {
        uint64_t len = std::min<uint64_t>(chunk.size() * 2, n - at);
        if (!(*w)->Write(i, at, chunk.data(), len).ok()) return 1;
      }
    }
    if (!(*w)->Commit().ok()) return 1;
  }
  std::printf("convert_bench: llama-like, %lld layers, %.2f GB bf16 in %s\n",
              static_cast<long long>(layers), total / 1e9, dir.c_str());

  const std::string src = dir + "/hf/model.safetensors";
  CopyFile(src, dir + "/copy.warm");  // warm the page cache for both runs
  unlink((dir + "/copy.warm").c_str());
  std::vector<double> copies, converts;
  std::string json;
  for (int rep = 0; rep < 3; ++rep) {
    copies.push_back(CopyFile(src, dir + "/copy.safetensors"));
    unlink((dir + "/copy.safetensors").c_str());
    std::string cmd = absl::StrCat(wsyncctl, " --json convert --quiet --model-config ", dir,
                                   "/config.json --from hf --to vllm:tp=2 --in ", dir, "/hf --out ",
                                   dir, "/out");
    double t0 = Now();
    FILE* p = popen(cmd.c_str(), "r");
    char line[1024];
    json.clear();
    while (std::fgets(line, sizeof(line), p)) json += line;
    int rc = pclose(p);
    converts.push_back(Now() - t0);
    if (rc != 0) {
      std::printf("convert failed: %s\n", json.c_str());
      return 1;
    }
    if (std::system(absl::StrCat("rm -rf ", dir, "/out").c_str()) != 0) std::printf("cannot remove %s/out\n", dir.c_str());
  }
  std::sort(copies.begin(), copies.end());
  std::sort(converts.begin(), converts.end());
  double c = copies[1], v = converts[1];
  std::printf("plain copy (read+write+fsync): %.2f s, %.0f MB/s\n", c, total / c / 1e6);
  std::printf("wsyncctl convert hf -> vllm:tp=2: %.2f s, %.0f MB/s = %.0f%% of the copy (target >= 50%%)\n",
              v, total / v / 1e6, 100 * c / v);
  std::printf("converter report: %s", json.c_str());
  if (std::system(absl::StrCat("rm -rf ", dir).c_str()) != 0) std::printf("cannot remove %s\n", dir.c_str());
  return 0;
}
