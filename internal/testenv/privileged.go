// Package testenv holds helpers shared by tests: privilege checks and the
// safety net of DESIGN.md §5 (from package priv), Docker helpers, and the
// real upstream (aws_signing_helper against the AWS fakes).
package testenv

import (
	"testing"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv/priv"
)

// Required reports whether privileged tests must run (see priv.Required).
func Required() bool { return priv.Required() }

// RequirePrivileged skips or fails a test that needs root (see priv).
func RequirePrivileged(t testing.TB) {
	t.Helper()
	priv.RequirePrivileged(t)
}

// Unsupported skips or fails a test whose capability is missing (see priv).
func Unsupported(t testing.TB, what string, err error) {
	t.Helper()
	priv.Unsupported(t, what, err)
}

// Blackhole installs the metadata blackhole routes (see priv).
func Blackhole(t testing.TB) {
	t.Helper()
	priv.Blackhole(t)
}
