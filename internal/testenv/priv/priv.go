// Package priv holds the privilege checks and the safety net of DESIGN.md
// §5 that every test shares. It imports nothing of the project, so any
// package's tests can use it (testenv re-exports it).
package priv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Required reports whether privileged tests must run (PDR_REQUIRE_PRIVILEGED
// set, as .ci/run does).
func Required() bool { return os.Getenv("PDR_REQUIRE_PRIVILEGED") != "" }

// RequirePrivileged skips the test when not root and not required, and fails
// it when required but not root.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if Required() {
		t.Fatal("PDR_REQUIRE_PRIVILEGED is set but the test is not running as root")
	}
	t.Skip("needs root (set PDR_REQUIRE_PRIVILEGED=1 to make this a failure)")
}

// Unsupported handles a capability the kernel or host lacks: skip when not
// required, fail when required.
func Unsupported(t testing.TB, what string, err error) {
	t.Helper()
	if Required() {
		t.Fatalf("%s is required (PDR_REQUIRE_PRIVILEGED set) but unavailable: %v", what, err)
	}
	t.Skipf("%s unavailable: %v", what, err)
}

// Blackhole installs blackhole routes for the metadata addresses so that a
// missed redirect fails locally instead of leaving the machine. Call it
// before any client dials 169.254.169.254 or fd00:ec2::254. The routes are
// left in place: they are harmless and other tests rely on them.
func Blackhole(t testing.TB) {
	t.Helper()
	RequirePrivileged(t)
	for _, args := range [][]string{
		{"route", "add", "blackhole", "169.254.169.254/32"},
		{"-6", "route", "add", "blackhole", "fd00:ec2::254/128"},
	} {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "File exists") {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}
