package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	pb "github.com/styletransfer/styletransfer/clients/go/styletransferv1"
)

// userAgent prefixes grpc-go's own user agent, so that server logs tell this client apart.
const userAgent = "styletransfer-go-stylize/1"

// stylize runs one job as cfg describes it, printing its events to w, and writes the result.
func stylize(ctx context.Context, cfg *config, w io.Writer) error {
	req, err := buildRequest(cfg)
	if err != nil {
		return err
	}
	transport, err := transportOption(cfg)
	if err != nil {
		return err
	}
	size := int(cfg.maxMessageBytes)
	conn, err := grpc.DialContext(ctx, cfg.target,
		transport,
		grpc.WithUserAgent(userAgent),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(size), grpc.MaxCallSendMsgSize(size)),
	)
	if err != nil {
		return err
	}
	defer conn.Close()

	if cfg.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	if cfg.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+cfg.token)
	}

	stream, err := pb.NewStyleTransferClient(conn).Transfer(ctx, req)
	if err != nil {
		return err
	}
	result, err := follow(stream, cfg.previewDir, w)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(cfg.out, result.GetImage().GetData()); err != nil {
		return fmt.Errorf("writing the result: %w", err)
	}
	fmt.Fprintf(w, "wrote %s\n", cfg.out)
	return nil
}

// follow prints the events of a Transfer stream to w until the stream ends, and returns its
// result. A stream that ends with a non-OK status returns that status as the error.
func follow(stream pb.StyleTransfer_TransferClient, previewDir string, w io.Writer) (*pb.Result, error) {
	var result *pb.Result
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch e := event.GetEvent().(type) {
		case *pb.TransferEvent_Accepted:
			a := e.Accepted
			fmt.Fprintf(w, "accepted: job=%s backend=%s device=%s size=%dx%d iterations=%d\n",
				a.GetJobId(), a.GetBackend(), a.GetDevice(), a.GetWidth(), a.GetHeight(),
				a.GetOptions().GetIterations())
		case *pb.TransferEvent_Progress:
			p := e.Progress
			fmt.Fprintf(w, "progress: iteration=%d/%d %s elapsed=%.2fs\n",
				p.GetIteration(), p.GetTotalIterations(), formatLosses(p.GetLosses()), p.GetElapsedSeconds())
		case *pb.TransferEvent_Preview:
			if err := savePreview(e.Preview, previewDir, w); err != nil {
				return nil, err
			}
		case *pb.TransferEvent_Result:
			result = e.Result
			img, t := result.GetImage(), result.GetTimings()
			fmt.Fprintf(w, "result: iterations=%d %s size=%dx%d format=%s bytes=%d "+
				"time=%.2fs (queued %.2fs, setup %.2fs, %.1f ms/iteration)\n",
				result.GetIterations(), formatLosses(result.GetLosses()), img.GetWidth(), img.GetHeight(),
				formatName(img.GetFormat()), len(img.GetData()), t.GetTotalSeconds(), t.GetQueuedSeconds(),
				t.GetSetupSeconds(), t.GetIterationMeanMs())
		case *pb.TransferEvent_Resumed:
			r := e.Resumed
			fmt.Fprintf(w, "resumed: from_iteration=%d attempt=%d replica=%s reason=%s\n",
				r.GetFromIteration(), r.GetAttempt(), r.GetReplica(), r.GetReason())
		case *pb.TransferEvent_Heartbeat:
			// The server is alive and the job is waiting (queued); nothing to show.
		}
	}
	if result == nil {
		return nil, errors.New("the stream ended without a result")
	}
	return result, nil
}

// formatLosses renders the weighted loss terms of one iteration.
func formatLosses(l *pb.Losses) string {
	return fmt.Sprintf("total=%.6g content=%.6g style=%.6g tv=%.6g",
		l.GetTotal(), l.GetContent(), l.GetStyle(), l.GetTv())
}

// formatName is an image format as a short name: PNG, JPEG, WEBP.
func formatName(f pb.ImageFormat) string {
	return strings.TrimPrefix(f.String(), "IMAGE_FORMAT_")
}

// savePreview reports a preview and, when dir is set, writes it there as preview-NNNNN.EXT.
func savePreview(p *pb.Preview, dir string, w io.Writer) error {
	img := p.GetImage()
	line := fmt.Sprintf("preview: iteration=%d size=%dx%d bytes=%d",
		p.GetIteration(), img.GetWidth(), img.GetHeight(), len(img.GetData()))
	if dir != "" {
		ext := map[pb.ImageFormat]string{pb.ImageFormat_IMAGE_FORMAT_JPEG: ".jpg", pb.ImageFormat_IMAGE_FORMAT_WEBP: ".webp"}[img.GetFormat()]
		if ext == "" {
			ext = ".png"
		}
		path := filepath.Join(dir, fmt.Sprintf("preview-%05d%s", p.GetIteration(), ext))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := writeFileAtomic(path, img.GetData()); err != nil {
			return fmt.Errorf("writing a preview: %w", err)
		}
		line += " file=" + path
	}
	fmt.Fprintln(w, line)
	return nil
}

// buildRequest reads the images and sets the options given on the command line, and only those.
func buildRequest(cfg *config) (*pb.TransferRequest, error) {
	content, err := os.ReadFile(cfg.content)
	if err != nil {
		return nil, err
	}
	req := &pb.TransferRequest{
		Content:        &pb.Image{Data: content},
		Options:        &pb.TransferOptions{},
		IdempotencyKey: cfg.key,
	}
	for _, path := range cfg.styles {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		req.Styles = append(req.Styles, &pb.StyleImage{Image: &pb.Image{Data: data}})
	}

	o, set := req.Options, cfg.set
	u32 := func(v uint) *uint32 { n := uint32(v); return &n } // parseFlags checked the range
	if set["iterations"] {
		o.Iterations = u32(cfg.iterations)
	}
	if set["max-size"] {
		o.MaxSize = u32(cfg.maxSize)
	}
	if set["preview-every"] {
		o.PreviewEvery = u32(cfg.previewEvery)
	}
	if set["quality"] {
		o.OutputQuality = u32(cfg.quality)
	}
	if set["seed"] {
		o.Seed = &cfg.seed
	}
	if set["content-weight"] {
		o.ContentWeight = &cfg.contentWeight
	}
	if set["style-weight"] {
		o.StyleWeight = &cfg.styleWeight
	}
	if set["tv-weight"] {
		o.TvWeight = &cfg.tvWeight
	}
	if set["learning-rate"] {
		o.LearningRate = &cfg.learningRate
	}
	if set["backend"] {
		o.Backend = &cfg.backend
	}
	if set["device"] {
		o.Device = &cfg.device
	}
	if set["content-layers"] {
		o.ContentLayers = splitList(cfg.contentLayers)
	}
	if set["style-layers"] {
		o.StyleLayers = splitList(cfg.styleLayers)
	}
	switch strings.ToLower(cfg.optimizer) {
	case "":
	case "lbfgs", "l-bfgs":
		o.Optimizer = pb.Optimizer_OPTIMIZER_LBFGS
	case "adam":
		o.Optimizer = pb.Optimizer_OPTIMIZER_ADAM
	default:
		return nil, usageError{fmt.Sprintf("--optimizer %q: use lbfgs or adam", cfg.optimizer)}
	}
	switch strings.ToLower(cfg.init) {
	case "":
	case "content":
		o.Init = pb.Init_INIT_CONTENT
	case "noise":
		o.Init = pb.Init_INIT_NOISE
	case "style":
		o.Init = pb.Init_INIT_STYLE
	default:
		return nil, usageError{fmt.Sprintf("--init %q: use content, noise or style", cfg.init)}
	}
	switch strings.ToLower(filepath.Ext(cfg.out)) {
	case ".png":
		o.OutputFormat = pb.ImageFormat_IMAGE_FORMAT_PNG
	case ".jpg", ".jpeg":
		o.OutputFormat = pb.ImageFormat_IMAGE_FORMAT_JPEG
	case ".webp":
		o.OutputFormat = pb.ImageFormat_IMAGE_FORMAT_WEBP
	}
	return req, nil
}

// splitList splits a comma-separated list, dropping blanks around the names.
func splitList(s string) []string {
	var names []string
	for _, name := range strings.Split(s, ",") {
		if name = strings.TrimSpace(name); name != "" {
			names = append(names, name)
		}
	}
	return names
}

// transportOption is plaintext (as `make run` serves) unless a TLS flag is given.
func transportOption(cfg *config) (grpc.DialOption, error) {
	if !cfg.tls && cfg.tlsCA == "" && cfg.tlsCert == "" {
		// grpc-go 1.33 (Debian bookworm) predates credentials/insecure.
		return grpc.WithInsecure(), nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.tlsCA != "" {
		pem, err := os.ReadFile(cfg.tlsCA)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate in it", cfg.tlsCA)
		}
	}
	if cfg.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.tlsCert, cfg.tlsKey)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(tc)), nil
}

// writeFileAtomic writes data to a temporary file beside path and renames it into place, so
// that path never holds a partial image.
func writeFileAtomic(path string, data []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".stylize-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
