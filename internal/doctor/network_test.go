package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/system"

	"github.com/per-docker-roles/per-docker-roles/internal/config"
	"github.com/per-docker-roles/per-docker-roles/internal/fakeaws"
	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
)

const (
	account   = "123456789012"
	baseRole  = "arn:aws:iam::123456789012:role/host-base"
	principal = "arn:aws:sts::123456789012:assumed-role/host-base/host"
)

// world is a host where everything works, built from fakes on loopback.
type world struct {
	cfg      config.Config
	deps     Deps
	store    *fakeaws.Store
	sts      *fakeaws.STS
	upstream *fakeUpstream
	docker   *fakeDocker
	issued   fakeaws.Issued
	ready    *int // status /readyz answers
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{store: fakeaws.NewStore(nil)}
	w.sts = fakeaws.NewSTS(w.store, fakeaws.STSConfig{Region: "eu-west-1"})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stsURL, err := w.sts.Start(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.issued = w.store.Issue(account, baseRole, principal, time.Hour, true)
	w.upstream = &fakeUpstream{role: "host-base", doc: func() map[string]any {
		return credDoc(w.issued.AccessKeyID, w.issued.SecretAccessKey, w.issued.SessionToken, w.issued.Expiration)
	}}
	upURL := startUpstream(t, w.upstream)

	ready := http.StatusOK
	w.ready = &ready
	admin := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(rw, r)
			return
		}
		rw.WriteHeader(*w.ready)
		if *w.ready == http.StatusOK {
			fmt.Fprintln(rw, "ready")
		} else {
			fmt.Fprintln(rw, "not ready:\n  upstream: credential document has empty keys")
		}
	}))
	t.Cleanup(admin.Close)

	w.docker = &fakeDocker{
		version: types.Version{Version: "20.10.24", APIVersion: "1.41", MinAPIVersion: "1.12", Os: "linux", Arch: "amd64"},
		info:    system.Info{CgroupDriver: "cgroupfs", CgroupVersion: "2", DefaultRuntime: "runc"},
		pids:    map[string]int{"c1": 101},
		containers: []container.Summary{
			{ID: "c1", Names: []string{"/reader"}, State: "running", Labels: map[string]string{"per-docker-roles.role": "app-reader"}},
			{ID: "c2", Names: []string{"/plain"}, State: "running", Labels: map[string]string{"other": "x"}},
		},
	}

	w.cfg = config.Default()
	w.cfg.Upstream = upURL
	w.cfg.STSEndpoint = stsURL
	w.cfg.Region = "eu-west-1"
	w.cfg.AdminListen = strings.TrimPrefix(admin.URL, "http://")
	w.deps = Deps{
		Docker:     w.docker,
		Timeout:    3 * time.Second,
		host:       goodHost(),
		readStatus: attachedPins(9910),
	}
	return w
}

// attachedPins is a running daemon's pin directory.
func attachedPins(port uint16) func(string) (redirect.Status, error) {
	return func(pinDir string) (redirect.Status, error) {
		st := redirect.Status{
			PinDir:     pinDir,
			HostTarget: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
			NSTarget:   netip.AddrPortFrom(netip.MustParseAddr("169.254.170.254"), port),
			Counters:   redirect.Counters{Redirected: 7, Recorded: 7, Exempt: 3},
		}
		for _, n := range []string{"link_connect4", "link_connect6", "link_getpeername4", "link_getpeername6", "link_sockops"} {
			st.Links = append(st.Links, redirect.LinkStatus{Name: n, Attached: true, CgroupID: 1})
		}
		return st, nil
	}
}

func (w *world) run(t *testing.T) Report {
	t.Helper()
	rep := Run(context.Background(), w.cfg, w.deps)
	var b strings.Builder
	rep.Print(&b)
	t.Logf("report:\n%s", b.String())
	return rep
}

func expect(t *testing.T, rep Report, name string, want Status, detail ...string) Entry {
	t.Helper()
	e, ok := rep.Get(name)
	if !ok {
		t.Fatalf("no %q entry", name)
	}
	if e.Status != want {
		t.Errorf("%s: status %v (%q), want %v", name, e.Status, e.Detail, want)
	}
	for _, d := range detail {
		if !strings.Contains(e.Detail, d) {
			t.Errorf("%s: detail %q does not contain %q", name, e.Detail, d)
		}
	}
	if (e.Status == Fail || e.Status == Warn) && e.Fix == "" {
		t.Errorf("%s: %v without a fix", name, e.Status)
	}
	return e
}

func TestHealthyHost(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	rep := w.run(t)
	for _, e := range rep.Entries {
		if e.Status != OK {
			t.Errorf("%s: %v %q, want OK on a healthy host", e.Name, e.Status, e.Detail)
		}
	}
	if rep.ExitCode() != 0 {
		t.Errorf("exit code %d", rep.ExitCode())
	}
	expect(t, rep, "upstream", OK, "role host-base", w.issued.Expiration.Format(time.RFC3339))
	expect(t, rep, "sts", OK, principal, "account "+account, w.cfg.STSEndpoint)
	expect(t, rep, "docker", OK, "Docker 20.10.24, API 1.41")
	expect(t, rep, "cgroup driver", OK, "cgroupfs driver", "container reader is at /docker/pid101")
	expect(t, rep, "redirect", OK, "5 of 5 links attached", "redirecting: host 127.0.0.1:9910, containers 169.254.170.254:9910", "redirected=7")
	expect(t, rep, "daemon", OK, "ready")
	expect(t, rep, "role labels", OK, "1 labelled container(s)")
	if got := w.sts.Calls(fakeaws.ActionGetCallerIdentity); got != 1 {
		t.Errorf("GetCallerIdentity calls = %d, want 1", got)
	}
	// One short-lived token, so the helper's 256-token table loses ours first.
	if w.upstream.puts != 1 || w.upstream.ttls[0] != doctorTokenTTL {
		t.Errorf("token PUTs = %d with TTLs %q, want one with %s", w.upstream.puts, w.upstream.ttls, doctorTokenTTL)
	}
	// The doctor never prints credentials.
	var b strings.Builder
	rep.Print(&b)
	for _, secret := range []string{w.issued.AccessKeyID, w.issued.SecretAccessKey, w.issued.SessionToken} {
		if strings.Contains(b.String(), secret) {
			t.Errorf("the report contains a credential: %q", secret)
		}
	}
}

func TestUpstreamFailures(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(*world)
		want   Status
		detail string
		fix    string
	}{
		{"empty keys (helper's failed refresh)", func(w *world) {
			w.upstream.doc = func() map[string]any { return credDoc("", "", "", time.Time{}) }
		}, Fail, "empty keys", "journalctl -u aws-signing-helper"},
		{"expired", func(w *world) {
			w.upstream.doc = func() map[string]any { return credDoc("AKIA", "s", "t", time.Now().Add(-time.Minute)) }
		}, Fail, "already expired", "certificate"},
		{"not renewing", func(w *world) {
			w.upstream.doc = func() map[string]any {
				return credDoc(w.issued.AccessKeyID, w.issued.SecretAccessKey, w.issued.SessionToken, time.Now().Add(2*time.Minute))
			}
		}, Warn, "left", "not renewing"},
		{"no role", func(w *world) { w.upstream.role = "" }, Fail, "404", "instance profile"},
		{"nothing listening", func(w *world) { w.cfg.Upstream = "http://127.0.0.1:1" }, Fail, "connection refused", "aws-signing-helper.service"},
		{"code not success", func(w *world) {
			w.upstream.doc = func() map[string]any {
				d := credDoc("a", "b", "c", time.Now().Add(time.Hour))
				d["Code"] = "Failure"
				return d
			}
		}, Fail, `Code "Failure"`, "--upstream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			tc.change(w)
			rep := w.run(t)
			e := expect(t, rep, "upstream", tc.want, tc.detail)
			if !strings.Contains(e.Fix, tc.fix) {
				t.Errorf("fix %q does not mention %q", e.Fix, tc.fix)
			}
			if tc.want == Fail {
				expect(t, rep, "sts", Skip, "no base credentials")
				expect(t, rep, "role labels", Skip, "base account unknown")
				if rep.ExitCode() != 1 {
					t.Errorf("exit code %d, want 1", rep.ExitCode())
				}
				if got := w.sts.Calls(fakeaws.ActionGetCallerIdentity); got != 0 {
					t.Errorf("STS called %d times without base credentials", got)
				}
			}
		})
	}
}

func TestUpstreamHangIsBounded(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	t.Cleanup(func() { close(release); hang.Close() })
	w.cfg.Upstream = hang.URL
	w.deps.Timeout = 300 * time.Millisecond
	start := time.Now()
	rep := w.run(t)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("doctor took %v against a hanging upstream", took)
	}
	expect(t, rep, "upstream", Fail, "deadline exceeded")
}

func TestSTSFailures(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(*world)
		detail string
		fix    string
	}{
		{"keys STS never issued", func(w *world) {
			w.upstream.doc = func() map[string]any { return credDoc("ASIAFORGED", "forged", "forged", time.Now().Add(time.Hour)) }
		}, "GetCallerIdentity", "clock"},
		{"unreachable", func(w *world) { w.cfg.STSEndpoint = "http://127.0.0.1:1" }, "connection refused", "HTTPS_PROXY"},
		{"wrong region", func(w *world) { w.cfg.Region = "us-west-2" }, "GetCallerIdentity", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			tc.change(w)
			rep := w.run(t)
			e := expect(t, rep, "sts", Fail, tc.detail)
			if !strings.Contains(e.Fix, tc.fix) {
				t.Errorf("fix %q does not mention %q", e.Fix, tc.fix)
			}
			expect(t, rep, "upstream", OK)
			expect(t, rep, "role labels", Skip, "see sts")
		})
	}
}

func TestRefusedLabels(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.cfg.AllowedRoles = []string{"arn:aws:iam::123456789012:role/app-*"}
	w.docker.containers = append(w.docker.containers,
		container.Summary{ID: "c3", Names: []string{"/admin"}, State: "running", Labels: map[string]string{"per-docker-roles.role": "admin"}},
		container.Summary{ID: "c4", Names: []string{"/foreign"}, State: "exited", Labels: map[string]string{"per-docker-roles.role": "arn:aws:iam::999999999999:role/app-x"}},
		container.Summary{ID: "c5", Names: []string{"/broken"}, State: "running", Labels: map[string]string{"per-docker-roles.role": "bad name!"}},
	)
	rep := w.run(t)
	e := expect(t, rep, "role labels", Warn, "3 of 4 labelled container(s) get no credentials",
		"admin (running): not allowed", "foreign (exited): not allowed", "broken (running): malformed")
	if strings.Contains(e.Detail, "reader") {
		t.Errorf("an allowed container is listed as refused: %q", e.Detail)
	}
	if rep.ExitCode() != 0 {
		t.Error("refused labels are a warning, not a blocker")
	}
	for _, f := range w.docker.filters {
		if f != w.cfg.RoleLabel {
			t.Errorf("listed containers with label filter %q, want %q", f, w.cfg.RoleLabel)
		}
	}
}

func TestDockerFailures(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.docker.pingErr = errors.New("dial unix /var/run/docker.sock: connect: no such file or directory")
	rep := w.run(t)
	e := expect(t, rep, "docker", Fail, "no such file")
	if !strings.Contains(e.Fix, "--docker-host") || !strings.Contains(e.Fix, "docker group") {
		t.Errorf("fix %q", e.Fix)
	}
	expect(t, rep, "cgroup driver", Skip)
	expect(t, rep, "role labels", Skip)

	w = newWorld(t)
	w.docker.version.APIVersion = "1.40"
	w.docker.info.CgroupDriver = "none"
	rep = w.run(t)
	expect(t, rep, "docker", Warn, "API 1.40")
	expect(t, rep, "cgroup driver", Warn, "none driver")

	w = newWorld(t)
	w.deps.host.procCgroup = func(int) (string, error) { return "", os.ErrNotExist }
	rep = w.run(t)
	expect(t, rep, "cgroup driver", Fail, "reader (pid 101) has no cgroup2 directory")
}

func TestRedirectAndDaemonStates(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		change   func(*world)
		check    string
		want     Status
		detail   string
		exitCode int
	}{
		{"no pins", func(w *world) { w.deps.readStatus = noPins }, "redirect", Warn, "nothing pinned", 0},
		{"pinned, daemon stopped (fail closed)", func(w *world) {
			w.deps.readStatus = func(d string) (redirect.Status, error) {
				st, _ := attachedPins(9910)(d)
				st.HostTarget, st.NSTarget = netip.AddrPort{}, netip.AddrPort{}
				return st, nil
			}
		}, "redirect", Warn, "refusing (no target: fail closed)", 0},
		{"one link missing", func(w *world) {
			w.deps.readStatus = func(d string) (redirect.Status, error) {
				st, _ := attachedPins(9910)(d)
				st.Links[4].Attached = false
				return st, nil
			}
		}, "redirect", Warn, "not attached: sockops", 0},
		{"other proxy port", func(w *world) { w.deps.readStatus = attachedPins(9999) }, "redirect", Warn, "port 9999 but --proxy-port is 9910", 0},
		{"attached elsewhere", func(w *world) { w.cfg.CgroupPath = "/sys/fs/cgroup/docker" }, "redirect", Warn, "--cgroup-path resolves to cgroup 4242", 0},
		{"no permission", func(w *world) {
			w.deps.readStatus = func(string) (redirect.Status, error) {
				return redirect.Status{}, fmt.Errorf("open map: permission denied: %w", syscall.EPERM)
			}
		}, "redirect", Warn, "cannot read the pins", 0},
		{"redirect off", func(w *world) { w.cfg.Redirect = "off" }, "redirect", Skip, "--redirect=off", 0},
		{"daemon not ready", func(w *world) { *w.ready = http.StatusServiceUnavailable }, "daemon", Fail, "empty keys", 1},
		{"daemon down", func(w *world) { w.cfg.AdminListen = "127.0.0.1:1" }, "daemon", Warn, "not running", 0},
		{"admin disabled", func(w *world) { w.cfg.AdminListen = "" }, "daemon", Skip, "empty", 0},
		{"bad config", func(w *world) { w.cfg.SessionDuration = 2 * time.Hour }, "configuration", Fail, "--session-duration", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			tc.change(w)
			rep := w.run(t)
			expect(t, rep, tc.check, tc.want, tc.detail)
			if rep.ExitCode() != tc.exitCode {
				t.Errorf("exit code %d, want %d", rep.ExitCode(), tc.exitCode)
			}
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestGuardedUpstream: while the daemon runs, the redirect's guard refuses
// connect() to the helper for everyone but the daemon (EPERM). That is a
// warning that points at /readyz, not a failure.
func TestGuardedUpstream(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	up := strings.TrimPrefix(w.cfg.Upstream, "http://")
	w.deps.UpstreamClient = &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Host == up {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EPERM)}
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
	rep := w.run(t)
	e := expect(t, rep, "upstream", Warn, "operation not permitted", "guard")
	if !strings.Contains(e.Fix, "/readyz") {
		t.Errorf("fix %q does not point at /readyz", e.Fix)
	}
	expect(t, rep, "sts", Skip, "guarded")
	expect(t, rep, "daemon", OK, "ready")
	if rep.ExitCode() != 0 {
		t.Errorf("exit code %d: a guarded upstream with a ready daemon blocks nothing", rep.ExitCode())
	}
}

// TestEC2UpstreamThroughLiveRedirect: on EC2 the upstream is the metadata
// address, which a live redirect sends to the proxy for every process but
// the daemon, so the doctor meets the proxy's host-caller policy (404). The
// transport answers in the proxy's place: nothing dials 169.254.169.254.
func TestEC2UpstreamThroughLiveRedirect(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		pins   func(string) (redirect.Status, error)
		want   Status
		detail string
		sts    string
	}{
		{"redirect live", attachedPins(9910), Warn, "reached the proxy", "guarded"},
		{"no redirect", noPins, Fail, "404", "no base credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			w.cfg.Upstream = "http://169.254.169.254"
			w.deps.readStatus = tc.pins
			var metadataRequests int
			w.deps.UpstreamClient = &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
				if r.URL.Hostname() != "169.254.169.254" {
					return http.DefaultTransport.RoundTrip(r)
				}
				metadataRequests++
				rec := httptest.NewRecorder()
				if r.Method == http.MethodPut {
					rec.WriteString("token")
				} else {
					rec.WriteHeader(http.StatusNotFound) // --host-callers=deny
				}
				return rec.Result(), nil
			})}
			rep := w.run(t)
			expect(t, rep, "upstream", tc.want, tc.detail)
			expect(t, rep, "sts", Skip, tc.sts)
			if metadataRequests != 2 {
				t.Errorf("metadata requests = %d, want token PUT + role list", metadataRequests)
			}
		})
	}
}
