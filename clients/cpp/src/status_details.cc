#include "status_details.h"

#include <google/protobuf/unknown_field_set.h>

#include <cstdint>
#include <cstdio>
#include <functional>

namespace stylize {
namespace {

using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

// Field numbers of the google.rpc messages read here (google/rpc/status.proto and
// google/rpc/error_details.proto), and of google.protobuf.Any and Duration.
constexpr int kStatusDetails = 3;
constexpr int kAnyTypeUrl = 1, kAnyValue = 2;
constexpr int kErrorInfoReason = 1, kErrorInfoDomain = 2;
constexpr int kBadRequestFieldViolations = 1, kViolationField = 1, kViolationDescription = 2;
constexpr int kRetryInfoRetryDelay = 1, kDurationSeconds = 1, kDurationNanos = 2;

// Calls visit(field) for every field numbered `number` of a serialized message.
void ForEach(const std::string& message, int number, const std::function<void(const UnknownField&)>& visit) {
  UnknownFieldSet fields;
  if (!fields.ParseFromString(message)) return;
  for (int i = 0; i < fields.field_count(); ++i) {
    if (fields.field(i).number() == number) visit(fields.field(i));
  }
}

// The length-delimited fields (strings, bytes, messages) numbered `number`, in order.
std::vector<std::string> Bytes(const std::string& message, int number) {
  std::vector<std::string> values;
  ForEach(message, number, [&](const UnknownField& field) {
    if (field.type() == UnknownField::TYPE_LENGTH_DELIMITED) values.push_back(field.length_delimited());
  });
  return values;
}

// The last value of a singular string or message field; empty when unset.
std::string String(const std::string& message, int number) {
  auto values = Bytes(message, number);
  return values.empty() ? std::string() : values.back();
}

uint64_t Varint(const std::string& message, int number) {
  uint64_t value = 0;
  ForEach(message, number, [&](const UnknownField& field) {
    if (field.type() == UnknownField::TYPE_VARINT) value = field.varint();
  });
  return value;
}

std::string DescribeDetail(const std::string& type, const std::string& value) {
  if (type == "google.rpc.ErrorInfo") {
    return "reason=" + String(value, kErrorInfoReason) + " domain=" + String(value, kErrorInfoDomain);
  }
  if (type == "google.rpc.BadRequest") {
    std::string line;
    for (const std::string& violation : Bytes(value, kBadRequestFieldViolations)) {
      if (!line.empty()) line += "; ";
      line += "field=" + String(violation, kViolationField) + ": " + String(violation, kViolationDescription);
    }
    return line;
  }
  if (type == "google.rpc.RetryInfo") {
    const std::string delay = String(value, kRetryInfoRetryDelay);
    const double seconds = static_cast<double>(static_cast<int64_t>(Varint(delay, kDurationSeconds))) +
                           static_cast<double>(static_cast<int32_t>(Varint(delay, kDurationNanos))) * 1e-9;
    char text[64];
    std::snprintf(text, sizeof text, "retry after %gs", seconds);
    return text;
  }
  return "";
}

}  // namespace

std::string CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "CODE_" + std::to_string(static_cast<int>(code));
  }
}

std::vector<std::string> DescribeDetails(const std::string& serialized_status) {
  std::vector<std::string> lines;
  for (const std::string& any : Bytes(serialized_status, kStatusDetails)) {
    const std::string url = String(any, kAnyTypeUrl);
    const std::string type = url.substr(url.rfind('/') + 1);  // npos + 1 == 0: the whole url
    if (std::string line = DescribeDetail(type, String(any, kAnyValue)); !line.empty()) {
      lines.push_back(std::move(line));
    }
  }
  return lines;
}

std::string Quote(const std::string& text) {
  std::string quoted = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      quoted += '\\';
      quoted += c;
    } else if (c == '\n') {
      quoted += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\x%02x", static_cast<unsigned char>(c));
      quoted += escape;
    } else {
      quoted += c;
    }
  }
  return quoted + "\"";
}

}  // namespace stylize
