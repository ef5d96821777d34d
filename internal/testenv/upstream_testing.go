package testenv

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// StartUpstream starts the Roles Anywhere and STS fakes on loopback and the
// real aws_signing_helper `serve` in front of them (built once per machine,
// cached), with a fresh PKI in t.TempDir. Everything stops in t.Cleanup.
// opts.StartHelper is forced on; use NewUpstream for fakes only.
func StartUpstream(t testing.TB, opts UpstreamConfig) *Upstream {
	t.Helper()
	if opts.PKIDir == "" {
		opts.PKIDir = t.TempDir()
	}
	opts.StartHelper = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // a cold helper build takes ~40 s
	defer cancel()
	u, err := NewUpstream(ctx, opts, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("start upstream: %v", err)
	}
	t.Cleanup(func() { _ = u.Close() })
	return u
}
