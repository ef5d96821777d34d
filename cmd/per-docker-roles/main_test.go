package main

import (
	"bytes"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

func TestCommandLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{"version", []string{"--version"}, 0, "per-docker-roles dev (commit unknown", ""},
		{"help lists env forms", []string{"--help"}, 0, "", "--upstream  [PDR_UPSTREAM]"},
		{"unknown flag", []string{"--no-such-flag"}, 2, "", "flag provided but not defined"},
		{"bad value", []string{"--redirect=iptables"}, 2, "", "--redirect \"iptables\": want ebpf or off"},
		{"chained session too long", []string{"--session-duration=2h"}, 2, "", "caps chained AssumeRole sessions at 1h"},
		{"stray argument", []string{"--redirect=off", "extra"}, 2, "", "unexpected argument \"extra\""},
		{"bpf without verb", []string{"bpf"}, 2, "", "usage: per-docker-roles bpf status|detach"},
		{"bpf unknown verb", []string{"bpf", "frobnicate"}, 2, "", "usage:"},
		{"bpf status of nothing", []string{"bpf", "status", "--bpf-pin-dir", t.TempDir() + "/none"}, 1, "", "per-docker-roles bpf status:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out, errb bytes.Buffer
			code := realMain(tt.args, &out, &errb)
			if code != tt.code || !strings.Contains(out.String(), tt.stdout) || !strings.Contains(errb.String(), tt.stderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q",
					code, out.String(), errb.String(), tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

// Startup failures are one clear line and exit 1, before anything is
// attached to the kernel.
func TestStartupFailures(t *testing.T) {
	t.Run("docker socket missing", func(t *testing.T) {
		t.Parallel()
		var out, errb bytes.Buffer
		code := realMain([]string{"--redirect=off", "--admin-listen=", "--docker-host", "unix:///nonexistent/docker.sock"}, &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), "cannot reach the Docker Engine API") {
			t.Fatalf("exit %d, stderr %q", code, errb.String())
		}
	})
	t.Run("port in use", func(t *testing.T) {
		testenv.RequirePrivileged(t) // needs the Docker socket first
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var out, errb bytes.Buffer
		code := realMain([]string{"--redirect=off", "--admin-listen=", "--listen", ln.Addr().String()}, &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), "proxy listen "+ln.Addr().String()) || !strings.Contains(errb.String(), "address already in use") {
			t.Fatalf("exit %d, stderr %q", code, errb.String())
		}
	})
}

func TestGuardAddrs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		upstream string
		want     []string
	}{
		{"http://127.0.0.1:9911", []string{"127.0.0.1:9911"}},
		{"http://localhost:9911", []string{"127.0.0.1:9911", "[::1]:9911"}},
		{"http://[::1]:8080", []string{"[::1]:8080"}},
		{"http://127.0.0.2", []string{"127.0.0.2:80"}},
		// EC2's IMDS is redirected for everyone but the daemon already.
		{"http://169.254.169.254", nil},
		{"https://helper.internal:9911", nil},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.upstream)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range guardAddrs(u) {
			got = append(got, a.String())
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("guardAddrs(%s) = %v, want %v", tt.upstream, got, tt.want)
		}
	}
}
