#include "daemon/service/request_limits.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/common/status.h"

namespace wsync::service {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::string Printable(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 32)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  return out;
}

absl::Status Check(const Message& m, const std::string& path, size_t max_string, size_t max_bytes, int depth) {
  if (depth > 32) return absl::InvalidArgumentError(absl::StrCat(path, ": messages nested too deeply"));
  const Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    for (int i = 0; i < n; ++i) {
      const std::string at = f->is_repeated() ? absl::StrCat(path, ".", f->name(), "[", i, "]")
                                              : absl::StrCat(path, ".", f->name());
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
        std::string scratch;
        const std::string& v = f->is_repeated() ? r->GetRepeatedStringReference(m, f, i, &scratch)
                                                : r->GetStringReference(m, f, &scratch);
        const bool is_bytes = f->type() == FieldDescriptor::TYPE_BYTES;
        const size_t limit = is_bytes ? max_bytes : max_string;
        if (v.size() > limit) {
          return absl::InvalidArgumentError(absl::StrCat(
              at, " is ", v.size(), " bytes long; the limit is ", limit,
              is_bytes ? "" : " (--max-name-bytes)", is_bytes ? "" : absl::StrCat(" (it starts '", Printable(v), "...')")));
        }
      } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        const Message& sub = f->is_repeated() ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f);
        WSYNC_RETURN_IF_ERROR(Check(sub, at, max_string, max_bytes, depth + 1));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckRequestLimits(const Message& request, size_t max_string_bytes, size_t max_bytes_field) {
  return Check(request, request.GetDescriptor()->name(), max_string_bytes, max_bytes_field, 0);
}

}  // namespace wsync::service
