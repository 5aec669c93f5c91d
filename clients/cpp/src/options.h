// The command line of `stylize`: what to send, where, and how to reach the server.
#ifndef STYLETRANSFER_CLIENTS_CPP_OPTIONS_H_
#define STYLETRANSFER_CLIENTS_CPP_OPTIONS_H_

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "styletransfer/v1/style_transfer.pb.h"

namespace stylize {

// A command line the program cannot run; exit status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Options {
  bool help = false;

  std::string target;               // host:port, default $STYLETRANSFER_SERVER or 127.0.0.1:50051
  std::string content;              // content image file
  std::vector<std::string> styles;  // style image files, blended with equal weights
  std::string out;                  // result file
  std::string preview_dir;          // where previews go; empty: not written
  std::string idempotency_key;

  std::optional<double> deadline_seconds;  // the call's gRPC deadline; the job ends with it
  bool tls = false;
  std::string tls_ca, tls_cert, tls_key;  // PEM files
  std::string token;                      // bearer token; default $STYLETRANSFER_TOKEN
  int max_message_bytes = 64 << 20;       // both directions, as the server's default

  // Only the options given on the command line are set; the server fills in the rest.
  styletransfer::v1::TransferOptions transfer;
};

// Parses argv (`--name value` or `--name=value`; a repeated flag keeps its last value, except
// --style, which adds one). Throws UsageError.
Options ParseArgs(int argc, const char* const* argv);

// The --help text.
std::string Usage();

}  // namespace stylize

#endif  // STYLETRANSFER_CLIENTS_CPP_OPTIONS_H_
