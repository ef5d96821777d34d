//go:build e2e

// Package e2e runs the whole product on this machine and asserts what real
// SDK clients in containers receive: container → eBPF redirect →
// per-docker-roles → real aws_signing_helper serve → Roles Anywhere fake,
// and per-docker-roles → STS fake. Run with `make e2e` (part of make test).
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/client"
	"go.uber.org/zap/zaptest"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv/clientimg"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv/stack"
)

const account = "123456789012"

// env is shared by the scenarios: one build of the daemon and images.
type env struct {
	daemon  string
	cli     *client.Client
	goImage string
	pyImage string
	helper  string
}

func setup(t *testing.T) env {
	t.Helper()
	testenv.RequirePrivileged(t)
	testenv.Blackhole(t)
	cli := testenv.Docker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := env{cli: cli, daemon: daemonBinary(t)}
	var err error
	if e.goImage, err = clientimg.BuildGo(ctx, cli); err != nil {
		t.Fatalf("build Go client image: %v", err)
	}
	if e.pyImage, err = clientimg.BuildPython(ctx, cli); err != nil {
		t.Fatalf("build Python client image: %v", err)
	}
	if e.helper, err = testenv.BuildSigningHelper(ctx, zaptest.NewLogger(t)); err != nil {
		t.Fatalf("build aws_signing_helper: %v", err)
	}
	return e
}

// daemonBinary is $PDR_DAEMON (make e2e passes bin/per-docker-roles) or
// a fresh build.
func daemonBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PDR_DAEMON"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	out := filepath.Join(t.TempDir(), "per-docker-roles")
	cmd := exec.Command("go", "build", "-o", out, "../cmd/per-docker-roles")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build daemon: %v\n%s", err, b)
	}
	return out
}

func (e env) start(t *testing.T, cfg stack.Config) *stack.Stack {
	t.Helper()
	cfg.Daemon, cfg.HelperPath = e.daemon, e.helper
	if cfg.Docker == nil {
		cfg.Docker = e.cli
	}
	cfg.WorkDir = t.TempDir()
	cfg.Log = zaptest.NewLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start stack: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log tail:\n%s", s.LogTail(40))
		}
		s.Close()
	})
	return s
}

func run(t *testing.T, s *stack.Stack, c stack.Client) stack.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := s.Run(ctx, c)
	if err != nil {
		t.Fatalf("run %s: %v", c.Name, err)
	}
	t.Logf("%s (%s) exit %d: %s %s", r.Name, c.Image, r.Exit, strings.TrimSpace(r.Stdout), strings.TrimSpace(r.Stderr))
	return r
}

func roleARN(role string) string { return fmt.Sprintf("arn:aws:iam::%s:role/%s", account, role) }

func assumedARN(role, session string) string {
	return fmt.Sprintf("arn:aws:sts::%s:assumed-role/%s/%s", account, role, session)
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// Scenario 1 and 2 share one stack: two roles through both SDKs, no label,
// and a label outside --allowed-roles.
func TestRolesPerContainer(t *testing.T) {
	e := setup(t)
	s := e.start(t, stack.Config{DaemonArgs: []string{
		"--allowed-roles", roleARN("app-*"),
	}})

	for _, img := range []struct{ sdk, image string }{{"go", e.goImage}, {"python", e.pyImage}} {
		for _, role := range []string{"app-reader", "app-writer"} {
			name := fmt.Sprintf("pdr-e2e-%s-%s-%d", img.sdk, role, time.Now().UnixNano()%100000)
			r := run(t, s, stack.Client{Image: img.image, Name: name, Role: role})
			if r.Exit != 0 || len(r.Lines) == 0 {
				t.Fatalf("%s client with role %s failed: exit %d, %s %s", img.sdk, role, r.Exit, r.Stdout, r.Stderr)
			}
			if got, want := str(r.Lines[0], "arn"), assumedARN(role, name); got != want {
				t.Errorf("%s client labelled %s got %q, want %q", img.sdk, role, got, want)
			}
		}
	}

	t.Run("no label gets no credentials", func(t *testing.T) {
		r := run(t, s, stack.Client{Image: e.goImage})
		if r.Exit == 0 || len(r.Lines) == 0 || str(r.Lines[0], "arn") != "" {
			t.Fatalf("unlabelled container received credentials: %s", r.Stdout)
		}
		if !strings.Contains(strings.ToLower(str(r.Lines[0], "error")), "credential") {
			t.Errorf("SDK error does not say credentials are missing: %q", str(r.Lines[0], "error"))
		}
	})

	t.Run("label outside allowed-roles", func(t *testing.T) {
		name := fmt.Sprintf("pdr-e2e-denied-%d", time.Now().UnixNano()%100000)
		r := run(t, s, stack.Client{Image: e.goImage, Name: name, Role: "admin"})
		if r.Exit == 0 || str(r.Lines[0], "arn") != "" {
			t.Fatalf("container with a refused role received credentials: %s", r.Stdout)
		}
		found := false
		for _, l := range s.DaemonLog() {
			if str(l, "container") == name && strings.Contains(fmt.Sprint(l), "not allowed") {
				found = true
			}
		}
		if !found {
			t.Errorf("no daemon log line names %s and says its role is not allowed; log tail:\n%s", name, s.LogTail(15))
		}
	})

	t.Run("token replayed by another container", func(t *testing.T) {
		a := run(t, s, stack.Client{Image: e.goImage, Role: "app-reader", Cmd: []string{"imds-raw", "token", "300"}})
		tok := strings.TrimSpace(a.Stdout)
		if a.Exit != 0 || len(tok) < 32 {
			t.Fatalf("container A got no token: %q", a.Stdout)
		}
		// Bound to A's container: in B's hands it is refused.
		b := run(t, s, stack.Client{Image: e.goImage, Role: "app-writer", Cmd: []string{"imds-raw", "get", "/latest/meta-data/iam/security-credentials/", tok}})
		if len(b.Lines) == 0 || b.Lines[0]["status"] != float64(401) {
			t.Fatalf("container B replaying A's token: %s, want status 401", b.Stdout)
		}
	})

	t.Run("IMDSv1 refused and X-Forwarded-For forbidden", func(t *testing.T) {
		v1 := run(t, s, stack.Client{Image: e.goImage, Role: "app-reader", Cmd: []string{"imds-raw", "v1", "/latest/meta-data/iam/security-credentials/"}})
		if len(v1.Lines) == 0 || v1.Lines[0]["status"] != float64(401) {
			t.Errorf("IMDSv1: %s, want 401", v1.Stdout)
		}
		xff := run(t, s, stack.Client{Image: e.goImage, Role: "app-reader", Cmd: []string{"imds-raw", "xff", "/latest/meta-data/iam/security-credentials/"}})
		if len(xff.Lines) == 0 || xff.Lines[0]["status"] != float64(403) {
			t.Errorf("X-Forwarded-For: %s, want 403", xff.Stdout)
		}
	})
}

// The core-daemon acceptance test: without the redirect, with IP
// identity, containers that point AWS_EC2_METADATA_SERVICE_ENDPOINT at the
// proxy each get their own role; an unlabelled one gets none.
func TestIPModeWithoutRedirect(t *testing.T) {
	e := setup(t)
	s := e.start(t, stack.Config{IPMode: true})
	for _, role := range []string{"app-reader", "app-writer"} {
		name := fmt.Sprintf("pdr-e2e-ip-%s-%d", role, time.Now().UnixNano()%100000)
		r := run(t, s, stack.Client{Image: e.goImage, Name: name, Role: role})
		if r.Exit != 0 || len(r.Lines) == 0 || str(r.Lines[0], "arn") != assumedARN(role, name) {
			t.Errorf("IP mode, role %s: %s %s", role, r.Stdout, r.Stderr)
		}
	}
	r := run(t, s, stack.Client{Image: e.goImage})
	if r.Exit == 0 || len(r.Lines) == 0 || str(r.Lines[0], "arn") != "" {
		t.Errorf("IP mode, unlabelled container received credentials: %s", r.Stdout)
	}
}
