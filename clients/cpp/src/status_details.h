// Rendering a failed call's status: the code's canonical name and the google.rpc error details
// the server attaches (ErrorInfo, BadRequest, RetryInfo).
#ifndef STYLETRANSFER_CLIENTS_CPP_STATUS_DETAILS_H_
#define STYLETRANSFER_CLIENTS_CPP_STATUS_DETAILS_H_

#include <grpcpp/support/status.h>

#include <string>
#include <vector>

namespace stylize {

// The canonical name of a status code, as the gRPC spec spells it (INVALID_ARGUMENT), or
// CODE_N for a code it lacks.
std::string CodeName(grpc::StatusCode code);

// One line per error detail of a serialized google.rpc.Status (grpc::Status::error_details())
// that this client knows, e.g. "reason=INVALID_IMAGE domain=styletransfer" or
// "field=options.iterations: 0 is outside [1, 10000]". Read from the wire format directly, so
// that the client needs no googleapis stubs; anything unknown or malformed is left out.
std::vector<std::string> DescribeDetails(const std::string& serialized_status);

// `text` in double quotes, with quotes, backslashes and control characters escaped.
std::string Quote(const std::string& text);

}  // namespace stylize

#endif  // STYLETRANSFER_CLIENTS_CPP_STATUS_DETAILS_H_
