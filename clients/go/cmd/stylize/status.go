package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// exitStatusBase + N is the exit status for gRPC status code N.
const exitStatusBase = 10

// codeNames are the canonical gRPC status code names, as the gRPC spec and other languages
// spell them (grpc-go's Code.String says InvalidArgument).
var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// codeName is the canonical name of a status code, or CODE_N for one the spec lacks.
func codeName(c codes.Code) string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return fmt.Sprintf("CODE_%d", uint32(c))
}

// report prints err to stderr and returns the exit status for it: 10+N for a gRPC status with
// code N, with the server's error details one per line; 2 for a usage error; 1 otherwise.
func report(err error, stderr io.Writer) int {
	var usage usageError
	if errors.As(err, &usage) {
		fmt.Fprintf(stderr, "stylize: %v\n", err)
		return exitUsage
	}
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintf(stderr, "stylize: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stderr, "stylize: the call failed: code=%s message=%q\n", codeName(st.Code()), st.Message())
	for _, detail := range st.Details() {
		if line := describeDetail(detail); line != "" {
			fmt.Fprintf(stderr, "  %s\n", line)
		}
	}
	return exitStatusBase + int(st.Code())
}

// describeDetail renders one google.rpc error detail the server attaches, or "" for one it
// does not know.
func describeDetail(detail interface{}) string {
	switch d := detail.(type) {
	case *errdetails.ErrorInfo:
		return fmt.Sprintf("reason=%s domain=%s", d.GetReason(), d.GetDomain())
	case *errdetails.BadRequest:
		var parts []string
		for _, v := range d.GetFieldViolations() {
			parts = append(parts, fmt.Sprintf("field=%s: %s", v.GetField(), v.GetDescription()))
		}
		return strings.Join(parts, "; ")
	case *errdetails.RetryInfo:
		return fmt.Sprintf("retry after %s", d.GetRetryDelay().AsDuration())
	}
	return ""
}
