#include "options.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <sstream>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace stylize {
namespace {

namespace v1 = styletransfer::v1;

using Setter = std::function<void(Options&, const std::string&)>;

struct Flag {
  std::string_view name;     // without the leading --
  std::string_view metavar;  // empty: a switch that takes no value
  std::string_view help;
  Setter set;
};

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// The whole of `text` as a number of type T, or a UsageError naming the flag.
template <typename T>
T ParseNumber(std::string_view flag, const std::string& text) {
  T value{};
  const char* end = text.data() + text.size();
  auto [ptr, error] = std::from_chars(text.data(), end, value);
  if (text.empty() || error != std::errc() || ptr != end) {
    std::string kind = std::is_integral_v<T> ? "a whole number" : "a number";
    if (error == std::errc::result_out_of_range) kind += " in range";
    throw UsageError("--" + std::string(flag) + " " + text + ": expected " + kind);
  }
  return value;
}

uint32_t ParseUint32(std::string_view flag, const std::string& text) {
  return ParseNumber<uint32_t>(flag, text);
}

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> names;
  std::istringstream in(text);
  for (std::string name; std::getline(in, name, ',');) {
    const auto first = name.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    names.push_back(name.substr(first, name.find_last_not_of(" \t") - first + 1));
  }
  return names;
}

const std::vector<Flag>& Flags() {
  static const std::vector<Flag> flags = {
      {"target", "HOST:PORT", "server address (default $STYLETRANSFER_SERVER, else 127.0.0.1:50051)",
       [](Options& o, const std::string& v) { o.target = v; }},
      {"content", "IMAGE", "content image: PNG, JPEG or WebP (required)",
       [](Options& o, const std::string& v) { o.content = v; }},
      {"style", "IMAGE", "style image (required); repeat for a blend of equal weights",
       [](Options& o, const std::string& v) { o.styles.push_back(v); }},
      {"out", "FILE", "where to write the result (required); .png, .jpg/.jpeg or .webp picks the format",
       [](Options& o, const std::string& v) { o.out = v; }},
      {"iterations", "N", "optimizer iterations (server default 500)",
       [](Options& o, const std::string& v) { o.transfer.set_iterations(ParseUint32("iterations", v)); }},
      {"max-size", "PX", "long side of the output (server default 512)",
       [](Options& o, const std::string& v) { o.transfer.set_max_size(ParseUint32("max-size", v)); }},
      {"content-weight", "ALPHA", "content weight (server default 1)",
       [](Options& o, const std::string& v) {
         o.transfer.set_content_weight(ParseNumber<double>("content-weight", v));
       }},
      {"style-weight", "BETA", "style weight (server default 1e3)",
       [](Options& o, const std::string& v) {
         o.transfer.set_style_weight(ParseNumber<double>("style-weight", v));
       }},
      {"tv-weight", "W", "total-variation weight (server default 0)",
       [](Options& o, const std::string& v) {
         o.transfer.set_tv_weight(ParseNumber<double>("tv-weight", v));
       }},
      {"content-layers", "LAYERS", "comma-separated content layers, e.g. conv4_2",
       [](Options& o, const std::string& v) {
         o.transfer.clear_content_layers();
         for (auto& name : SplitList(v)) o.transfer.add_content_layers(std::move(name));
       }},
      {"style-layers", "LAYERS", "comma-separated style layers, e.g. conv1_1,conv2_1",
       [](Options& o, const std::string& v) {
         o.transfer.clear_style_layers();
         for (auto& name : SplitList(v)) o.transfer.add_style_layers(std::move(name));
       }},
      {"optimizer", "NAME", "lbfgs or adam (server default lbfgs)",
       [](Options& o, const std::string& v) {
         const std::string name = Lower(v);
         if (name == "lbfgs" || name == "l-bfgs") {
           o.transfer.set_optimizer(v1::OPTIMIZER_LBFGS);
         } else if (name == "adam") {
           o.transfer.set_optimizer(v1::OPTIMIZER_ADAM);
         } else {
           throw UsageError("--optimizer " + v + ": use lbfgs or adam");
         }
       }},
      {"learning-rate", "LR", "step size (server default 1 for L-BFGS, 2 for Adam)",
       [](Options& o, const std::string& v) {
         o.transfer.set_learning_rate(ParseNumber<double>("learning-rate", v));
       }},
      {"init", "NAME", "content, noise or style (server default content)",
       [](Options& o, const std::string& v) {
         const std::string name = Lower(v);
         if (name == "content") {
           o.transfer.set_init(v1::INIT_CONTENT);
         } else if (name == "noise") {
           o.transfer.set_init(v1::INIT_NOISE);
         } else if (name == "style") {
           o.transfer.set_init(v1::INIT_STYLE);
         } else {
           throw UsageError("--init " + v + ": use content, noise or style");
         }
       }},
      {"seed", "N", "seed of the noise init (server default 0)",
       [](Options& o, const std::string& v) { o.transfer.set_seed(ParseNumber<uint64_t>("seed", v)); }},
      {"quality", "Q", "JPEG/WebP quality 1-100 (server default 95)",
       [](Options& o, const std::string& v) { o.transfer.set_output_quality(ParseUint32("quality", v)); }},
      {"preview-every", "N", "send a preview every N iterations (server default 0: none)",
       [](Options& o, const std::string& v) {
         o.transfer.set_preview_every(ParseUint32("preview-every", v));
       }},
      {"preview-max-size", "PX", "long side of previews (server default 256)",
       [](Options& o, const std::string& v) {
         o.transfer.set_preview_max_size(ParseUint32("preview-max-size", v));
       }},
      {"preview-dir", "DIR", "write previews there as preview-NNNNN.EXT",
       [](Options& o, const std::string& v) { o.preview_dir = v; }},
      {"backend", "NAME", "backend, e.g. pytorch or tensorflow (default: the server's)",
       [](Options& o, const std::string& v) { o.transfer.set_backend(v); }},
      {"device", "DEVICE", "auto, cpu, cuda or cuda:N (default: the server's)",
       [](Options& o, const std::string& v) { o.transfer.set_device(v); }},
      {"max-duration-seconds", "S", "longest the job may run once accepted (default: no limit)",
       [](Options& o, const std::string& v) {
         o.transfer.set_max_duration_seconds(ParseNumber<double>("max-duration-seconds", v));
       }},
      {"deadline-seconds", "S", "deadline of the call; when it passes the job ends (default: none)",
       [](Options& o, const std::string& v) {
         const double seconds = ParseNumber<double>("deadline-seconds", v);
         if (!(seconds > 0 && seconds <= 1e9)) throw UsageError("--deadline-seconds must be > 0");
         o.deadline_seconds = seconds;
       }},
      {"key", "KEY", "idempotency key: a retry with the same key attaches to the same job",
       [](Options& o, const std::string& v) { o.idempotency_key = v; }},
      {"tls", "", "use TLS, trusting the system's roots",
       [](Options& o, const std::string&) { o.tls = true; }},
      {"tls-ca", "PEM", "use TLS, trusting the CA certificates in this file",
       [](Options& o, const std::string& v) { o.tls_ca = v; }},
      {"tls-cert", "PEM", "client certificate for mutual TLS (with --tls-key)",
       [](Options& o, const std::string& v) { o.tls_cert = v; }},
      {"tls-key", "PEM", "client private key for mutual TLS (with --tls-cert)",
       [](Options& o, const std::string& v) { o.tls_key = v; }},
      {"token", "TOKEN", "bearer token sent as authorization metadata (default $STYLETRANSFER_TOKEN)",
       [](Options& o, const std::string& v) { o.token = v; }},
      {"max-message-bytes", "N", "largest message sent or received (default 67108864)",
       [](Options& o, const std::string& v) {
         const auto bytes = ParseNumber<int>("max-message-bytes", v);
         if (bytes <= 0) throw UsageError("--max-message-bytes must be > 0");
         o.max_message_bytes = bytes;
       }},
      {"help", "", "show this help", [](Options& o, const std::string&) { o.help = true; }},
  };
  return flags;
}

const Flag* FindFlag(std::string_view name) {
  for (const Flag& flag : Flags()) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

}  // namespace

Options ParseArgs(int argc, const char* const* argv) {
  Options options;
  bool token_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h") arg = "--help";
    if (arg.substr(0, 2) != "--" || arg.size() == 2) {
      throw UsageError("unexpected argument " + std::string(arg));
    }
    arg.remove_prefix(2);
    std::optional<std::string> value;
    if (const auto eq = arg.find('='); eq != std::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
      arg = arg.substr(0, eq);
    }
    const Flag* flag = FindFlag(arg);
    if (flag == nullptr) throw UsageError("unknown option --" + std::string(arg));
    if (flag->metavar.empty()) {
      if (value) throw UsageError("--" + std::string(arg) + " takes no value");
      value.emplace();
    } else if (!value) {
      if (i + 1 >= argc) throw UsageError("--" + std::string(arg) + " needs a value");
      value = argv[++i];
    }
    flag->set(options, *value);
    token_given = token_given || arg == "token";
  }
  if (options.help) return options;

  if (options.target.empty()) options.target = Env("STYLETRANSFER_SERVER");
  if (options.target.empty()) options.target = "127.0.0.1:50051";
  if (!token_given) options.token = Env("STYLETRANSFER_TOKEN");

  if (options.content.empty()) throw UsageError("--content is required");
  if (options.styles.empty()) throw UsageError("--style is required");
  if (options.out.empty()) throw UsageError("--out is required");
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    throw UsageError("--tls-cert and --tls-key go together");
  }

  const std::string extension = Lower(std::filesystem::path(options.out).extension().string());
  if (extension == ".png") {
    options.transfer.set_output_format(v1::IMAGE_FORMAT_PNG);
  } else if (extension == ".jpg" || extension == ".jpeg") {
    options.transfer.set_output_format(v1::IMAGE_FORMAT_JPEG);
  } else if (extension == ".webp") {
    options.transfer.set_output_format(v1::IMAGE_FORMAT_WEBP);
  }
  return options;
}

std::string Usage() {
  std::ostringstream out;
  out << "usage: stylize --content IMAGE --style IMAGE [--style IMAGE ...] --out FILE [options]\n\n"
         "Runs one neural style transfer job on a styletransfer server (the streaming RPC\n"
         "styletransfer.v1.StyleTransfer/Transfer), prints its events and writes the result.\n"
         "Options left out take the server's defaults.\n\n";
  for (const Flag& flag : Flags()) {
    std::string left = "  --" + std::string(flag.name);
    if (!flag.metavar.empty()) left += " " + std::string(flag.metavar);
    out << left;
    out << std::string(left.size() < 32 ? 32 - left.size() : 1, ' ') << flag.help << "\n";
  }
  out << "\nExit status: 0 the result was written; 1 a local failure (files, a stream without a\n"
         "result); 2 a usage error; 10+N the server ended the call with gRPC status code N\n"
         "(13 INVALID_ARGUMENT, 14 DEADLINE_EXCEEDED, 18 RESOURCE_EXHAUSTED, 24 UNAVAILABLE).\n";
  return out.str();
}

}  // namespace stylize
