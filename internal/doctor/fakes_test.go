package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/system"

	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
)

// goodHost answers every probe like a capable 6.18 host.
func goodHost() *hostProbes {
	return &hostProbes{
		uname:       unameOf("6.18.44-fc-v1252"),
		procStatus:  statusOf(0x1ffffffffff),
		mountinfo:   mountinfoOf("46 23 0:40 / /sys/fs/bpf rw,relatime - bpf bpffs rw,mode=700\n"),
		programType: func(ebpf.ProgramType) error { return nil },
		attachType:  func(ebpf.ProgramType, ebpf.AttachType) error { return nil },
		helper:      func(ebpf.ProgramType, asm.BuiltinFunc) error { return nil },
		mapType:     func(ebpf.MapType) error { return nil },
		netnsCookie: func() error { return nil },
		btf:         func() error { return nil },
		cgroup2:     func() (string, error) { return "/sys/fs/cgroup", nil },
		cgroupID: func(dir string) (uint64, error) {
			if dir == "/sys/fs/cgroup" {
				return 1, nil
			}
			return 4242, nil
		},
		procCgroup: func(pid int) (string, error) { return fmt.Sprintf("/docker/pid%d", pid), nil },
	}
}

func unameOf(rel string) func() (string, string, error) {
	return func() (string, string, error) { return rel, "x86_64", nil }
}

func statusOf(capEff uint64) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(fmt.Sprintf("Name:\tdoctor\nCapEff:\t%016x\n", capEff))), nil
	}
}

func mountinfoOf(s string) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(s)), nil }
}

func noPins(pinDir string) (redirect.Status, error) {
	st := redirect.Status{PinDir: pinDir}
	for _, n := range []string{"link_connect4", "link_connect6", "link_getpeername4", "link_getpeername6", "link_sockops"} {
		st.Links = append(st.Links, redirect.LinkStatus{Name: n})
	}
	return st, fmt.Errorf("redirect: status: open map pdr_conf in %s: %w", pinDir, os.ErrNotExist)
}

// fakeDocker is an engine with a fixed container list. ContainerList
// honours the label filter the way dockerd does (key present).
type fakeDocker struct {
	pingErr    error
	version    types.Version
	info       system.Info
	containers []container.Summary
	pids       map[string]int

	mu      sync.Mutex
	filters []string
}

func (f *fakeDocker) Ping(context.Context) (types.Ping, error) {
	if f.pingErr != nil {
		return types.Ping{}, f.pingErr
	}
	return types.Ping{APIVersion: f.version.APIVersion}, nil
}

func (f *fakeDocker) ServerVersion(context.Context) (types.Version, error) { return f.version, nil }
func (f *fakeDocker) Info(context.Context) (system.Info, error)            { return f.info, nil }
func (f *fakeDocker) DaemonHost() string                                   { return "unix:///fake/docker.sock" }

func (f *fakeDocker) ContainerList(_ context.Context, o container.ListOptions) ([]container.Summary, error) {
	labels := o.Filters.Get("label")
	f.mu.Lock()
	f.filters = append(f.filters, labels...)
	f.mu.Unlock()
	var out []container.Summary
	for _, c := range f.containers {
		if !o.All && c.State != "running" {
			continue
		}
		match := true
		for _, l := range labels {
			if _, ok := c.Labels[l]; !ok {
				match = false
			}
		}
		if match {
			out = append(out, c)
		}
	}
	return out, nil
}

func (f *fakeDocker) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	pid, ok := f.pids[id]
	if !ok {
		return container.InspectResponse{}, fmt.Errorf("no such container %s", id)
	}
	return container.InspectResponse{ContainerJSONBase: &container.ContainerJSONBase{ID: id, State: &container.State{Running: true, Pid: pid}}}, nil
}

// fakeUpstream is an IMDSv2 endpoint in the shape of aws_signing_helper
// serve: one role, token required.
type fakeUpstream struct {
	role string
	doc  func() map[string]any // credential document per GET

	mu     sync.Mutex
	tokens map[string]bool
	puts   int
	ttls   []string
}

func (u *fakeUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		u.puts++
		u.ttls = append(u.ttls, r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
		tok := fmt.Sprintf("tok-%d", u.puts)
		u.tokens[tok] = true
		io.WriteString(w, tok)
		return
	}
	if !u.tokens[r.Header.Get("X-aws-ec2-metadata-token")] {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	switch {
	case r.URL.Path == credsPath:
		if u.role == "" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, u.role)
	case strings.HasPrefix(r.URL.Path, credsPath):
		json.NewEncoder(w).Encode(u.doc())
	default:
		http.NotFound(w, r)
	}
}

func startUpstream(t *testing.T, u *fakeUpstream) string {
	t.Helper()
	u.tokens = map[string]bool{}
	srv := httptest.NewServer(u) // 127.0.0.1
	t.Cleanup(srv.Close)
	return srv.URL
}

// credDoc is a credential document in the helper's format.
func credDoc(ak, sk, tok string, exp time.Time) map[string]any {
	return map[string]any{
		"Code": "Success", "Type": "AWS-HMAC", "LastUpdated": time.Now().UTC().Format(time.RFC3339),
		"AccessKeyId": ak, "SecretAccessKey": sk, "Token": tok, "Expiration": exp.UTC().Format(time.RFC3339),
	}
}
