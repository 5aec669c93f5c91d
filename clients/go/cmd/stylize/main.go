// Command stylize runs one neural style transfer job on a styletransfer server and writes the
// stylized image.
//
// It calls the server-streaming RPC styletransfer.v1.StyleTransfer/Transfer and prints the
// accepted job (id, backend, device, output size), one line per iteration (losses, elapsed
// time), a line per preview if asked for, and the result; then it writes the result's encoded
// bytes to --out. Interrupting it (Ctrl-C) cancels the call, and with it the job.
//
// Usage:
//
//	stylize --content photo.png --style painting.jpg --out result.png [flags]
//
// Options left out take the server's defaults; only the flags given are sent. The output
// format follows the extension of --out (.png, .jpg/.jpeg, .webp; anything else: the server's
// default, PNG).
//
// Exit status:
//
//	0     the result was written
//	1     a local failure: reading an input, writing the output, a stream without a result
//	2     a usage error
//	10+N  the server ended the call with gRPC status code N, for example 13 for
//	      INVALID_ARGUMENT, 14 for DEADLINE_EXCEEDED, 18 for RESOURCE_EXHAUSTED and 24 for
//	      UNAVAILABLE (no server at --target); the code's name and the message go to stderr
//	      as "code=INVALID_ARGUMENT message=...".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Exit statuses other than the 10+N of a gRPC status; see the package comment.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// config holds the command line.
type config struct {
	target     string
	content    string
	styles     []string
	out        string
	previewDir string

	iterations    uint
	maxSize       uint
	previewEvery  uint
	quality       uint
	seed          uint64
	contentWeight float64
	styleWeight   float64
	tvWeight      float64
	learningRate  float64
	contentLayers string
	styleLayers   string
	optimizer     string
	init          string
	backend       string
	device        string
	key           string

	timeout         time.Duration
	tls             bool
	tlsCA           string
	tlsCert         string
	tlsKey          string
	token           string
	maxMessageBytes uint

	// set names the flags given on the command line: only those options are sent.
	set map[string]bool
}

// stringList is a flag that may be repeated.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

func (s *stringList) Set(value string) error {
	*s = append(*s, value)
	return nil
}

// usageError is a command line the program cannot run.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole program: it parses args, runs the job, and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "stylize: %v\n", err)
		return exitUsage
	}
	if err := stylize(ctx, cfg, stdout); err != nil {
		return report(err, stderr)
	}
	return exitOK
}

// parseFlags reads the command line into a config and checks what can be checked locally.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{set: map[string]bool{}}
	fs := flag.NewFlagSet("stylize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: stylize --content IMAGE --style IMAGE [--style IMAGE ...] --out FILE [flags]")
		fs.PrintDefaults()
	}

	defaultTarget := os.Getenv("STYLETRANSFER_SERVER")
	if defaultTarget == "" {
		defaultTarget = "127.0.0.1:50051"
	}
	fs.StringVar(&cfg.target, "target", defaultTarget, "server `host:port`; $STYLETRANSFER_SERVER sets the default")
	fs.StringVar(&cfg.content, "content", "", "content `image` (PNG, JPEG or WebP)")
	fs.Var((*stringList)(&cfg.styles), "style", "style `image`; repeat for a blend of equal weights")
	fs.StringVar(&cfg.out, "out", "", "where to write the result `file`")
	fs.StringVar(&cfg.previewDir, "preview-dir", "", "write previews into this `directory` (with --preview-every)")

	fs.UintVar(&cfg.iterations, "iterations", 0, "optimizer iterations (server default 500)")
	fs.UintVar(&cfg.maxSize, "max-size", 0, "long side of the output in pixels (server default 512)")
	fs.UintVar(&cfg.previewEvery, "preview-every", 0, "send a preview every `N` iterations")
	fs.UintVar(&cfg.quality, "quality", 0, "JPEG/WebP quality 1-100 (server default 95)")
	fs.Uint64Var(&cfg.seed, "seed", 0, "seed of the noise init")
	fs.Float64Var(&cfg.contentWeight, "content-weight", 0, "content weight alpha (server default 1)")
	fs.Float64Var(&cfg.styleWeight, "style-weight", 0, "style weight beta (server default 1e3)")
	fs.Float64Var(&cfg.tvWeight, "tv-weight", 0, "total-variation weight (server default 0)")
	fs.Float64Var(&cfg.learningRate, "learning-rate", 0, "step size (server default 1 for L-BFGS, 2 for Adam)")
	fs.StringVar(&cfg.contentLayers, "content-layers", "", "comma-separated content `layers` (e.g. conv4_2)")
	fs.StringVar(&cfg.styleLayers, "style-layers", "", "comma-separated style `layers` (e.g. conv1_1,conv2_1)")
	fs.StringVar(&cfg.optimizer, "optimizer", "", "lbfgs or adam (server default lbfgs)")
	fs.StringVar(&cfg.init, "init", "", "content, noise or style (server default content)")
	fs.StringVar(&cfg.backend, "backend", "", "backend `name`, e.g. pytorch or tensorflow")
	fs.StringVar(&cfg.device, "device", "", "device: auto, cpu, cuda or cuda:N")
	fs.StringVar(&cfg.key, "key", "", "idempotency key: a retry with the same key attaches to the same job")

	fs.DurationVar(&cfg.timeout, "timeout", 0, "deadline of the call, e.g. 90s (0: none); the job ends with it")
	fs.BoolVar(&cfg.tls, "tls", false, "use TLS, trusting the system's roots")
	fs.StringVar(&cfg.tlsCA, "tls-ca", "", "use TLS, trusting the CA certificates in this PEM `file`")
	fs.StringVar(&cfg.tlsCert, "tls-cert", "", "client certificate PEM `file` for mutual TLS")
	fs.StringVar(&cfg.tlsKey, "tls-key", "", "client key PEM `file` for mutual TLS")
	fs.StringVar(&cfg.token, "token", "", "bearer `token` sent as authorization metadata (default $STYLETRANSFER_TOKEN)")
	fs.UintVar(&cfg.maxMessageBytes, "max-message-bytes", 64<<20, "largest message sent or received")

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) { cfg.set[f.Name] = true })
	if !cfg.set["token"] {
		cfg.token = os.Getenv("STYLETRANSFER_TOKEN") // read here, so that -h never shows it
	}

	switch {
	case fs.NArg() > 0:
		return nil, usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	case cfg.content == "":
		return nil, usageError{"--content is required"}
	case len(cfg.styles) == 0:
		return nil, usageError{"--style is required"}
	case cfg.out == "":
		return nil, usageError{"--out is required"}
	case (cfg.tlsCert == "") != (cfg.tlsKey == ""):
		return nil, usageError{"--tls-cert and --tls-key go together"}
	case cfg.maxMessageBytes == 0 || cfg.maxMessageBytes > math.MaxInt32:
		return nil, usageError{"--max-message-bytes must be between 1 and 2147483647"}
	}
	for _, name := range []string{"iterations", "max-size", "preview-every", "quality"} {
		if v := fs.Lookup(name).Value.(flag.Getter).Get().(uint); v > math.MaxUint32 {
			return nil, usageError{fmt.Sprintf("--%s %d is out of range", name, v)}
		}
	}
	return cfg, nil
}
