// stylize: runs one neural style transfer job on a styletransfer server and writes the result.
//
// It calls the server-streaming RPC styletransfer.v1.StyleTransfer/Transfer and prints the
// accepted job (id, backend, device, output size), one line per iteration (losses, elapsed
// time), a line per preview if asked for, and the result; then it writes the result's encoded
// bytes to --out, through a temporary file, so that --out never holds a partial image.
// Interrupting it (SIGINT, SIGTERM) cancels the call, and with it the job. `stylize --help`
// lists the options and the exit statuses.
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "options.h"
#include "status_details.h"
#include "styletransfer/v1/style_transfer.grpc.pb.h"

namespace {

namespace fs = std::filesystem;
namespace v1 = styletransfer::v1;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitStatusBase = 10;  // + the gRPC status code
constexpr char kUserAgent[] = "styletransfer-cpp-stylize/1";

// A failure on this side of the call (files, a stream without a result); exit status 1.
class LocalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string ReadFile(const std::string& path) {
  std::error_code error;
  if (fs::is_directory(path, error)) throw LocalError(path + ": is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LocalError(path + ": " + std::strerror(errno));
  std::string data{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw LocalError(path + ": read failed");
  return data;
}

// Writes data to a temporary file beside path and renames it into place.
void WriteFileAtomic(const fs::path& path, const std::string& data) {
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::string temp = (dir / ".stylize-XXXXXX").string();
  const int fd = ::mkstemp(temp.data());
  if (fd < 0) throw LocalError(path.string() + ": " + std::strerror(errno));
  bool ok = true;
  for (const char *next = data.data(), *end = next + data.size(); ok && next < end;) {
    const ssize_t written = ::write(fd, next, static_cast<size_t>(end - next));
    if (written >= 0) {
      next += written;
    } else {
      ok = errno == EINTR;
    }
  }
  ok = ok && ::fchmod(fd, 0644) == 0;
  int error = errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    error = errno;
  }
  if (ok && std::rename(temp.c_str(), path.c_str()) != 0) {
    ok = false;
    error = errno;
  }
  if (!ok) {
    ::unlink(temp.c_str());
    throw LocalError(path.string() + ": " + std::strerror(error));
  }
}

v1::TransferRequest BuildRequest(const stylize::Options& options) {
  v1::TransferRequest request;
  request.mutable_content()->set_data(ReadFile(options.content));
  for (const std::string& path : options.styles) {
    request.add_styles()->mutable_image()->set_data(ReadFile(path));
  }
  *request.mutable_options() = options.transfer;
  request.set_idempotency_key(options.idempotency_key);
  return request;
}

// Plaintext (as `make run` serves) unless a TLS option is given.
std::shared_ptr<grpc::ChannelCredentials> Credentials(const stylize::Options& options) {
  if (!options.tls && options.tls_ca.empty() && options.tls_cert.empty()) {
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.tls_ca.empty()) ssl.pem_root_certs = ReadFile(options.tls_ca);
  if (!options.tls_cert.empty()) {
    ssl.pem_cert_chain = ReadFile(options.tls_cert);
    ssl.pem_private_key = ReadFile(options.tls_key);
  }
  return grpc::SslCredentials(ssl);
}

std::string FormatLosses(const v1::Losses& losses) {
  char text[160];
  std::snprintf(text, sizeof text, "total=%.6g content=%.6g style=%.6g tv=%.6g", losses.total(),
                losses.content(), losses.style(), losses.tv());
  return text;
}

const char* FormatName(v1::ImageFormat format) {
  switch (format) {
    case v1::IMAGE_FORMAT_PNG: return "PNG";
    case v1::IMAGE_FORMAT_PNG16: return "PNG16";
    case v1::IMAGE_FORMAT_JPEG: return "JPEG";
    case v1::IMAGE_FORMAT_WEBP: return "WEBP";
    default: return "UNSPECIFIED";
  }
}

const char* Extension(v1::ImageFormat format) {
  switch (format) {
    case v1::IMAGE_FORMAT_JPEG: return ".jpg";
    case v1::IMAGE_FORMAT_WEBP: return ".webp";
    default: return ".png";
  }
}

// Reports a preview and, when dir is set, writes it there as preview-NNNNN.EXT.
void SavePreview(const v1::Preview& preview, const std::string& dir) {
  const v1::EncodedImage& image = preview.image();
  std::printf("preview: iteration=%u size=%ux%u bytes=%zu", preview.iteration(), image.width(),
              image.height(), image.data().size());
  if (!dir.empty()) {
    char name[48];
    std::snprintf(name, sizeof name, "preview-%05u%s", preview.iteration(), Extension(image.format()));
    const fs::path path = fs::path(dir) / name;
    std::error_code error;
    fs::create_directories(dir, error);
    if (error) throw LocalError(dir + ": " + error.message());
    WriteFileAtomic(path, image.data());
    std::printf(" file=%s", path.c_str());
  }
  std::printf("\n");
}

// Prints one event; returns the result when it is one.
std::optional<v1::Result> Show(const v1::TransferEvent& event, const std::string& preview_dir) {
  switch (event.event_case()) {
    case v1::TransferEvent::kAccepted: {
      const v1::Accepted& a = event.accepted();
      std::printf("accepted: job=%s backend=%s device=%s size=%ux%u iterations=%u\n", a.job_id().c_str(),
                  a.backend().c_str(), a.device().c_str(), a.width(), a.height(), a.options().iterations());
      break;
    }
    case v1::TransferEvent::kProgress: {
      const v1::Progress& p = event.progress();
      std::printf("progress: iteration=%u/%u %s elapsed=%.2fs\n", p.iteration(), p.total_iterations(),
                  FormatLosses(p.losses()).c_str(), p.elapsed_seconds());
      break;
    }
    case v1::TransferEvent::kPreview:
      SavePreview(event.preview(), preview_dir);
      break;
    case v1::TransferEvent::kResult: {
      const v1::Result& r = event.result();
      const v1::Timings& t = r.timings();
      std::printf(
          "result: iterations=%u %s size=%ux%u format=%s bytes=%zu time=%.2fs (queued %.2fs, setup %.2fs, "
          "%.1f ms/iteration)\n",
          r.iterations(), FormatLosses(r.losses()).c_str(), r.image().width(), r.image().height(),
          FormatName(r.image().format()), r.image().data().size(), t.total_seconds(), t.queued_seconds(),
          t.setup_seconds(), t.iteration_mean_ms());
      return r;
    }
    case v1::TransferEvent::kResumed: {
      const v1::Resumed& r = event.resumed();
      std::printf("resumed: from_iteration=%u attempt=%u replica=%s reason=%s\n", r.from_iteration(),
                  r.attempt(), r.replica().c_str(), r.reason().c_str());
      break;
    }
    case v1::TransferEvent::kHeartbeat:    // the job is waiting (queued); nothing to show
    case v1::TransferEvent::EVENT_NOT_SET:  // an event newer than this client
      break;
  }
  return std::nullopt;
}

// Blocks SIGINT and SIGTERM in the calling thread and in every thread it starts later (gRPC's
// own included), so that they reach no thread by surprise; a SignalCanceller waits for them.
void BlockSignals(sigset_t& signals) {
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
}

// Cancels a call when SIGINT or SIGTERM arrives while it lives. A thread of its own waits for
// the signal, because ClientContext::TryCancel may not be called from a signal handler.
class SignalCanceller {
 public:
  SignalCanceller(grpc::ClientContext& context, const sigset_t& signals)
      : context_(context), signals_(signals), waiter_([this] { Wait(); }) {}
  SignalCanceller(const SignalCanceller&) = delete;
  SignalCanceller& operator=(const SignalCanceller&) = delete;
  ~SignalCanceller() {
    done_ = true;
    pthread_kill(waiter_.native_handle(), SIGTERM);  // wakes the waiter, which then does nothing
    waiter_.join();
  }

  bool signalled() const { return signalled_; }

 private:
  void Wait() {
    int signal = 0;
    sigwait(&signals_, &signal);
    if (!done_) {
      signalled_ = true;
      context_.TryCancel();
    }
  }

  grpc::ClientContext& context_;
  const sigset_t signals_;
  std::atomic<bool> done_{false};
  std::atomic<bool> signalled_{false};
  std::thread waiter_;  // last: it starts once the members it reads are set
};

int Report(const grpc::Status& status, bool interrupted) {
  const std::string code = stylize::CodeName(status.error_code());
  const std::string message = stylize::Quote(status.error_message());
  std::fprintf(stderr, "stylize: the call failed: code=%s message=%s\n", code.c_str(), message.c_str());
  for (const std::string& line : stylize::DescribeDetails(status.error_details())) {
    std::fprintf(stderr, "  %s\n", line.c_str());
  }
  if (interrupted) std::fprintf(stderr, "stylize: interrupted; the call and its job were cancelled\n");
  return kExitStatusBase + static_cast<int>(status.error_code());
}

int Run(const stylize::Options& options, const sigset_t& signals) {
  const v1::TransferRequest request = BuildRequest(options);

  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(options.max_message_bytes);
  arguments.SetMaxSendMessageSize(options.max_message_bytes);
  arguments.SetUserAgentPrefix(kUserAgent);
  const auto stub =
      v1::StyleTransfer::NewStub(grpc::CreateCustomChannel(options.target, Credentials(options), arguments));

  grpc::ClientContext context;
  if (options.deadline_seconds) {
    const std::chrono::duration<double> seconds(*options.deadline_seconds);
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::duration_cast<std::chrono::system_clock::duration>(seconds));
  }
  if (!options.token.empty()) context.AddMetadata("authorization", "Bearer " + options.token);

  std::optional<v1::Result> result;
  std::optional<LocalError> failure;
  grpc::Status status;
  bool interrupted = false;
  {
    SignalCanceller canceller(context, signals);
    const auto reader = stub->Transfer(&context, request);
    v1::TransferEvent event;
    while (reader->Read(&event)) {
      try {
        if (auto shown = Show(event, options.preview_dir)) result = std::move(shown);
      } catch (const LocalError& error) {
        failure = error;
        context.TryCancel();
        while (reader->Read(&event)) {
        }
        break;
      }
    }
    status = reader->Finish();
    interrupted = canceller.signalled();
  }
  if (failure) throw *failure;
  if (!status.ok()) return Report(status, interrupted);
  if (!result) throw LocalError("the stream ended without a result");

  WriteFileAtomic(options.out, result->image().data());
  std::printf("wrote %s\n", options.out.c_str());
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // one line per event, as it happens, even into a pipe
  stylize::Options options;
  try {
    options = stylize::ParseArgs(argc, argv);
  } catch (const stylize::UsageError& error) {
    std::fprintf(stderr, "stylize: %s (see --help)\n", error.what());
    return kExitUsage;
  }
  if (options.help) {
    std::fputs(stylize::Usage().c_str(), stdout);
    return kExitOk;
  }

  sigset_t signals;
  BlockSignals(signals);
  try {
    return Run(options, signals);
  } catch (const std::exception& error) {  // a LocalError, or out of memory
    std::fprintf(stderr, "stylize: %s\n", error.what());
    return kExitFailure;
  }
}
