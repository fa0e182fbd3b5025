// Package clienttest drives dr-gateway from Go's gRPC stack (grpc-go, protoc-gen-go
// and protoc-gen-go-grpc code generated from proto/). details.go is the README's Go
// snippet: how a Go caller reads the google.rpc details of an error.
package clienttest

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// ErrorDetails is what a caller branches on, read from a gateway error.
type ErrorDetails struct {
	Reason     string            // ErrorInfo.reason, e.g. "ORDER_FULFILLED"
	Metadata   map[string]string // ErrorInfo.metadata: http_status, dr_code, …
	Fields     []string          // BadRequest: the request fields that were wrong
	RetryAfter time.Duration     // RetryInfo: when to try again (0: not retryable as is)
}

// ReadDetails decodes the google.rpc details of err (status.FromError(err).Details()).
func ReadDetails(err error) ErrorDetails {
	var d ErrorDetails
	st, _ := status.FromError(err)
	for _, detail := range st.Details() {
		switch t := detail.(type) {
		case *errdetails.ErrorInfo:
			d.Reason, d.Metadata = t.GetReason(), t.GetMetadata()
		case *errdetails.BadRequest:
			for _, v := range t.GetFieldViolations() {
				d.Fields = append(d.Fields, v.GetField())
			}
		case *errdetails.RetryInfo:
			d.RetryAfter = time.Duration(t.GetRetryDelay().GetSeconds())*time.Second +
				time.Duration(t.GetRetryDelay().GetNanos())
		}
	}
	return d
}
