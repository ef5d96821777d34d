package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

func TestParseFlagsValidation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notExec := filepath.Join(dir, "plain")
	if err := os.WriteFile(notExec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string // substring; empty means valid
	}{
		{"minimal", []string{"--pki-dir", dir}, ""},
		{"full", []string{"--pki-dir", dir, "--listen-ra", "127.0.0.1:8443", "--listen-sts", "[::1]:8444",
			"--trust", "pdr-base=>arn:aws:iam::123456789012:role/*", "--trust", "a=>b"}, ""},
		{"no pki dir", nil, "--pki-dir is required"},
		{"wildcard listen", []string{"--pki-dir", dir, "--listen-ra", "0.0.0.0:8443"}, "loopback IP only"},
		{"empty host", []string{"--pki-dir", dir, "--listen-sts", ":8444"}, "loopback IP only"},
		{"hostname", []string{"--pki-dir", dir, "--listen-sts", "localhost:8444"}, "loopback IP only"},
		{"private address", []string{"--pki-dir", dir, "--listen-ra", "10.0.0.1:1"}, "loopback IP only"},
		{"no port", []string{"--pki-dir", dir, "--listen-ra", "127.0.0.1"}, "not host:port"},
		{"bad account", []string{"--pki-dir", dir, "--account", "1234"}, "12-digit"},
		{"bad trust", []string{"--pki-dir", dir, "--trust", "just-a-role"}, "principal=>role"},
		{"non-IAM trust ARN", []string{"--pki-dir", dir, "--trust", "arn:aws:sts::1:x=>y"}, "not an IAM role ARN"},
		{"short session", []string{"--pki-dir", dir, "--session-duration", "10m"}, "--session-duration"},
		{"helper not executable", []string{"--pki-dir", dir, "--start-helper", notExec}, "not an executable"},
		{"stray argument", []string{"--pki-dir", dir, "extra"}, "unexpected arguments"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseFlags(tc.args, io.Discard)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestTrustRulesExpandNames(t *testing.T) {
	t.Parallel()
	c := config{Account: "123456789012", Trust: []string{"pdr-base => app-*"}}
	rules, err := c.trustRules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 1 || rules[0].Principal != "arn:aws:iam::123456789012:role/pdr-base" || rules[0].Role != "arn:aws:iam::123456789012:role/app-*" {
		t.Fatalf("rules %+v", rules)
	}
}

// TestRunStartsHelper runs the command with the real helper and checks that
// what it prints is usable: the helper answers on the printed URL and the RA
// fake rejects an unsigned CreateSession.
func TestRunStartsHelper(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	helper, err := testenv.BuildSigningHelper(ctx, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	pr, pw := io.Pipe()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	envFile := filepath.Join(t.TempDir(), "env")
	go func() {
		done <- run(runCtx, []string{"--pki-dir", t.TempDir(), "--start-helper", helper, "--helper-port", strconv.Itoa(port),
			"--env-file", envFile}, pw, io.Discard)
		pw.Close()
	}()
	got := map[string]string{}
	sc := bufio.NewScanner(pr)
	for len(got) < 10 && sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		got[k] = strings.Trim(v, "'")
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	for _, k := range []string{"PDR_FAKE_RA_URL", "PDR_FAKE_STS_URL", "PDR_HELPER_URL", "PDR_HELPER_CMD", "PDR_ROLE_ARN"} {
		if got[k] == "" {
			t.Fatalf("output lacks %s: %v", k, got)
		}
	}
	if !strings.Contains(got["PDR_HELPER_CMD"], "--endpoint "+got["PDR_FAKE_RA_URL"]) {
		t.Errorf("helper command %q does not point at %s", got["PDR_HELPER_CMD"], got["PDR_FAKE_RA_URL"])
	}
	if b, err := os.ReadFile(envFile); err != nil || !strings.Contains(string(b), "PDR_FAKE_STS_URL=") {
		t.Errorf("env file: %v %q", err, b)
	}
	req, _ := http.NewRequest(http.MethodPut, got["PDR_HELPER_URL"]+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("helper token PUT: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Post(got["PDR_FAKE_RA_URL"]+"/sessions?profileArn=x&roleArn=y&trustAnchorArn=z", "application/json", strings.NewReader("{}"))
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("unsigned CreateSession: %v %v, want 403", resp, err)
	}
	resp.Body.Close()
	stop()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
