package imds

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/per-docker-roles/per-docker-roles/internal/creds"
	"github.com/per-docker-roles/per-docker-roles/internal/identity"
)

// client returns an http.Client whose connections come from who's
// loopback address, with keep-alive on.
func (h *harness) client(t testing.TB, who string) (*http.Client, *int) {
	t.Helper()
	var mu sync.Mutex
	dials := 0
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(callers[who].ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			mu.Lock()
			dials++
			mu.Unlock()
			return d.DialContext(ctx, network, h.addr) // only ever the harness
		},
		MaxIdleConnsPerHost: 1,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, &dials
}

// do sends one request and returns status, body and whether the server
// asked to close the connection.
func do(t testing.TB, c *http.Client, method, path string, hdr ...string) (int, string, bool) {
	t.Helper()
	req, err := http.NewRequest(method, "http://169.254.169.254"+path, nil) // host is ignored by the dialer
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hdr {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Close
}

func mintToken(t testing.TB, c *http.Client) string {
	t.Helper()
	code, body, _ := do(t, c, "PUT", pToken, ttl21600)
	if code != 200 {
		t.Fatalf("token PUT: %d %q", code, body)
	}
	return body
}

func TestIdentifyOncePerConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{})
	c, dials := h.client(t, "app")
	tk := mintToken(t, c)
	for range 5 {
		if code, body, _ := do(t, c, "GET", pList+"app-role", "X-aws-ec2-metadata-token: "+tk); code != 200 {
			t.Fatalf("GET creds: %d %q", code, body)
		}
	}
	perConn, total := h.ident.Calls()
	if *dials != 1 || total != 1 {
		t.Fatalf("6 requests on %d connection(s) made %d Identify calls (%v), want 1 and 1", *dials, total, perConn)
	}
}

func TestNotSyncedClosesAndReidentifies(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{})
	c, dials := h.client(t, "notsynced")
	for i := range 3 {
		code, _, closed := do(t, c, "PUT", pToken, ttl21600)
		if code != 503 || !closed {
			t.Fatalf("attempt %d: status %d close %v, want 503 and Connection: close", i, code, closed)
		}
	}
	_, total := h.ident.Calls()
	if *dials != 3 || total != 3 {
		t.Fatalf("3 attempts: %d dials, %d Identify calls; want a fresh connection and identification each time", *dials, total)
	}
}

func TestNoRecordRefusesWholeConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{cfg: Config{IMDSv1: true}})
	c, _ := h.client(t, "norecord")
	for _, p := range []string{pToken, pList, pList + "app-role", pInfo} {
		m := "GET"
		if p == pToken {
			m = "PUT"
		}
		if code, _, _ := do(t, c, m, p, ttl21600); code != 403 {
			t.Errorf("%s %s: %d, want 403", m, p, code)
		}
	}
	if reqs := h.broker.Requests(); len(reqs) != 0 {
		t.Errorf("broker asked %v for a connection with no redirect record", reqs)
	}
}

func observed(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

func fieldMap(e observer.LoggedEntry) map[string]any { return e.ContextMap() }

func TestLogLines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, who, path string
		level           zapcore.Level
		reason          string
		fields          map[string]any
	}{
		{"not allowed", "notallowed", pList, zapcore.WarnLevel, "outside the allowed-roles policy",
			map[string]any{"container": "notallowed", "status": int64(404), "cgroup_id": uint64(1004)}},
		{"malformed", "malformed", pList, zapcore.WarnLevel, "malformed",
			map[string]any{"container": "malformed", "status": int64(404)}},
		{"no record", "norecord", pList, zapcore.WarnLevel, "no redirect record",
			map[string]any{"status": int64(403)}},
		{"not synced", "notsynced", pList, zapcore.WarnLevel, "identification failed",
			map[string]any{"status": int64(503)}},
		{"no label", "nolabel", pList, zapcore.DebugLevel, "no role label",
			map[string]any{"container": "nolabel", "status": int64(404)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			log, logs := observed(t)
			h := newHarness(t, harnessOpt{log: log, cfg: Config{IMDSv1: true}})
			c, _ := h.client(t, tt.who)
			do(t, c, "GET", tt.path)
			var found bool
			for _, e := range logs.FilterMessage("imds request").All() {
				f := fieldMap(e)
				if !strings.Contains(fmt.Sprint(f["reason"]), tt.reason) {
					continue
				}
				found = true
				if e.Level != tt.level {
					t.Errorf("level %s, want %s", e.Level, tt.level)
				}
				for k, v := range tt.fields {
					if f[k] != v {
						t.Errorf("field %s = %#v, want %#v (line %v)", k, f[k], v, f)
					}
				}
				if _, ok := f["peer"]; !ok {
					t.Errorf("no peer field: %v", f)
				}
			}
			if !found {
				t.Fatalf("no request line with reason %q; got %v", tt.reason, logs.All())
			}
		})
	}
}

func TestAuditLine(t *testing.T) {
	t.Parallel()
	log, logs := observed(t)
	h := newHarness(t, harnessOpt{log: log})
	c, _ := h.client(t, "app")
	tk := mintToken(t, c)
	do(t, c, "GET", pList+"app-role", "X-aws-ec2-metadata-token: "+tk)
	c2, _ := h.client(t, "stsdown")
	tk2 := mintToken(t, c2)
	do(t, c2, "GET", pList+"sts-down-role", "X-aws-ec2-metadata-token: "+tk2)

	vends := logs.FilterMessage("credential vend").All()
	if len(vends) != 2 {
		t.Fatalf("%d audit lines, want one per vend (2)", len(vends))
	}
	want := []map[string]any{
		{"container": "app", "container_id": strings.Repeat("a", 64), "role_arn": "arn:aws:iam::123456789012:role/app-role", "cache": "hit", "outcome": "ok", "cgroup_id": uint64(1001)},
		{"container": "stsdown", "role_arn": "arn:aws:iam::123456789012:role/sts-down-role", "cache": "miss", "outcome": "error"},
	}
	for i, e := range vends {
		f := fieldMap(e)
		for k, v := range want[i] {
			if f[k] != v {
				t.Errorf("audit %d: %s = %#v, want %#v", i, k, f[k], v)
			}
		}
	}
	// Nothing secret anywhere in any log line.
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, secret := range []string{"SECRETASIA", "SESSIONTOKEN", tk, tk2} {
			if strings.Contains(line, secret) {
				t.Errorf("log line leaks %q: %s", secret, line)
			}
		}
	}
}

func TestBrokerRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{})
	c, _ := h.client(t, "app")
	tk := mintToken(t, c)
	do(t, c, "GET", pExt+"app-role", "X-aws-ec2-metadata-token: "+tk)
	got := h.broker.Requests()
	want := creds.Request{RoleARN: "arn:aws:iam::123456789012:role/app-role", ExternalID: "ext-123", SessionName: "app"}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("broker requests %+v, want [%+v]", got, want)
	}
	// The role list, iam/info and refusals never reach the broker.
	do(t, c, "GET", pList, "X-aws-ec2-metadata-token: "+tk)
	do(t, c, "GET", pInfo, "X-aws-ec2-metadata-token: "+tk)
	do(t, c, "GET", pList+"other-role", "X-aws-ec2-metadata-token: "+tk)
	do(t, c, "GET", pList+"app-role")
	if n := len(h.broker.Requests()); n != 1 {
		t.Fatalf("broker asked %d times, want 1", n)
	}
}

func TestBaseUnknownIs503(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{cfg: Config{HostCallers: HostBase}})
	h.broker.mu.Lock()
	h.broker.baseARN = ""
	h.broker.mu.Unlock()
	for _, who := range []string{"app", "host"} {
		c, _ := h.client(t, who)
		tk := mintToken(t, c)
		if code, body, _ := do(t, c, "GET", pList, "X-aws-ec2-metadata-token: "+tk); code != 503 || body != string(bodyNoBase) {
			t.Errorf("%s: %d %q, want 503 %q", who, code, body, bodyNoBase)
		}
	}
}

func TestHostBaseError(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{cfg: Config{HostCallers: HostBase}})
	h.broker.mu.Lock()
	h.broker.baseErr = fmt.Errorf("fetch: %w", creds.ErrUpstream)
	h.broker.mu.Unlock()
	c, _ := h.client(t, "host")
	tk := mintToken(t, c)
	if code, body, _ := do(t, c, "GET", pList+"host-role", "X-aws-ec2-metadata-token: "+tk); code != 503 || body != string(bodyUpstream) {
		t.Fatalf("host creds with upstream down: %d %q", code, body)
	}
}

func TestPanicRecovered(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{})
	h.broker.mu.Lock()
	h.broker.panicOn = "arn:aws:iam::123456789012:role/app-role"
	h.broker.mu.Unlock()
	c, _ := h.client(t, "app")
	tk := mintToken(t, c)
	if code, _, _ := do(t, c, "GET", pList+"app-role", "X-aws-ec2-metadata-token: "+tk); code != 500 {
		t.Fatalf("panicking broker: %d, want 500", code)
	}
	if code, _, _ := do(t, c, "GET", pList, "X-aws-ec2-metadata-token: "+tk); code != 200 {
		t.Fatalf("after a panic the server answers %d", code)
	}
	if v := counterValue(t, h.reg, "pdr_imds_requests_total", map[string]string{"route": "credentials", "status": "500"}); v != 1 {
		t.Fatalf("requests_total{credentials,500} = %v", v)
	}
}

// counterValue reads one series without prometheus/testutil (whose
// dependencies are not in go.sum).
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metric
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{})
	app, _ := h.client(t, "app")
	tk := mintToken(t, app)
	for range 3 {
		do(t, app, "GET", pList+"app-role", "X-aws-ec2-metadata-token: "+tk)
	}
	other, _ := h.client(t, "other")
	tk2 := mintToken(t, other)
	do(t, other, "GET", pList+"other-role", "X-aws-ec2-metadata-token: "+tk2)
	do(t, other, "GET", "/nope")

	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"pdr_imds_requests_total", map[string]string{"route": "token", "status": "200"}, 2},
		{"pdr_imds_requests_total", map[string]string{"route": "credentials", "status": "200"}, 4},
		{"pdr_imds_requests_total", map[string]string{"route": "unknown", "status": "404"}, 1},
		{"pdr_imds_credential_cache_hits_total", nil, 3},
		{"pdr_imds_credential_cache_misses_total", nil, 1},
		{"pdr_credential_vend_duration_seconds", map[string]string{"cache": "hit", "outcome": "ok"}, 3},
		{"pdr_credential_vend_duration_seconds", map[string]string{"cache": "miss", "outcome": "ok"}, 1},
		{"pdr_imds_tokens_live", nil, 2},
	}
	for _, tt := range tests {
		if got := counterValue(t, h.reg, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
}

func TestServeSeveralListenersAndShutdown(t *testing.T) {
	t.Parallel()
	ident, broker := newFakeIdentifier(), newFakeBroker()
	srv, err := New(Config{}, Deps{Identifier: ident, Broker: broker}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var addrs []string
	errs := make(chan error, 2)
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		go func() { errs <- srv.Serve(ctx, ln) }()
	}
	for _, a := range addrs {
		conn, err := net.Dial("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n", pToken, ttl21600)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("listener %s: %v %v", a, resp, err)
		}
		conn.Close()
	}
	cancel()
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("Serve after cancel: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after its context ended")
		}
	}
	if _, err := net.Dial("tcp", addrs[0]); err == nil {
		t.Error("listener still accepting after shutdown")
	}
}

func TestShutdownWaitsForInflight(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	broker := &slowBroker{fakeBroker: newFakeBroker(), entered: make(chan struct{}), release: release}
	srv, err := New(Config{IMDSv1: true}, Deps{Identifier: newFakeIdentifier(), Broker: broker, Now: (&fakeClock{t: t0}).Now}, quietLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(context.Background(), ln) }()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(callers["app"].ip)}}
	conn, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %sapp-role HTTP/1.1\r\nHost: x\r\n\r\n", pList)
	<-broker.entered
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("in-flight request: %v %v", resp, err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

type slowBroker struct {
	*fakeBroker
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (b *slowBroker) Get(ctx context.Context, req creds.Request) (*creds.Credentials, bool, error) {
	b.once.Do(func() { close(b.entered) })
	<-b.release
	return b.fakeBroker.Get(ctx, req)
}

func quietLogger(t *testing.T) *zap.Logger {
	t.Helper()
	log, _ := observed(t)
	return log
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	good := []Config{{}, {HostCallers: HostBase, IMDSv1: true}, {HostCallers: HostDeny}}
	for _, c := range good {
		if err := c.Validate(); err != nil {
			t.Errorf("Validate(%+v): %v", c, err)
		}
	}
	bad := []Config{
		{HostCallers: "other-role"},
		{HostCallers: "allow"},
		{IdentifyTimeout: -1},
	}
	bad = append(bad, Config{})
	bad[len(bad)-1].Roles.Allowed = []string{"not-an-arn"}
	bad = append(bad, Config{})
	bad[len(bad)-1].Tokens.MaxTokens = -1
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted", c)
		}
		if _, err := New(c, Deps{Identifier: newFakeIdentifier(), Broker: newFakeBroker()}, nil, prometheus.NewRegistry()); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
	if _, err := New(Config{}, Deps{}, nil, prometheus.NewRegistry()); err == nil {
		t.Error("New without deps accepted")
	}
}

func TestDuplicateRegistration(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	deps := Deps{Identifier: newFakeIdentifier(), Broker: newFakeBroker()}
	if _, err := New(Config{}, deps, nil, reg); err != nil {
		t.Fatal(err)
	}
	var are prometheus.AlreadyRegisteredError
	if _, err := New(Config{}, deps, nil, reg); !errors.As(err, &are) {
		t.Fatalf("second New on one registry: %v, want AlreadyRegisteredError", err)
	}
}

// TestHandlerWithoutServer drives the handler as a plain http.Handler
// (httptest): identity comes from RemoteAddr, per request.
func TestHandlerWithoutServer(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{cfg: Config{IMDSv1: true}})
	req := httptest.NewRequest("GET", pList, nil)
	req.RemoteAddr = netip.AddrPortFrom(netip.MustParseAddr(callers["app"].ip), 4242).String()
	w := httptest.NewRecorder()
	h.srv.ServeHTTP(w, req)
	if w.Code != 200 || w.Body.String() != "app-role" {
		t.Fatalf("got %d %q", w.Code, w.Body.String())
	}
	if perConn, _ := h.ident.Calls(); perConn[netip.MustParseAddrPort(req.RemoteAddr)] != 1 {
		t.Fatal("identified from the wrong address")
	}
}

// TestIdentifyTimeout: an Identifier that hangs is cut off and the caller
// gets 503 + close, not a hung connection.
func TestIdentifyTimeout(t *testing.T) {
	t.Parallel()
	srv, err := New(Config{IdentifyTimeout: 50 * time.Millisecond}, Deps{Identifier: hangingIdentifier{}, Broker: newFakeBroker()}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("PUT", pToken, nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	w := httptest.NewRecorder()
	start := time.Now()
	srv.ServeHTTP(w, req)
	if w.Code != 503 || w.Header().Get("Connection") != "close" || time.Since(start) > 5*time.Second {
		t.Fatalf("hanging identifier: %d %v after %s", w.Code, w.Header(), time.Since(start))
	}
}

type hangingIdentifier struct{}

func (hangingIdentifier) Identify(ctx context.Context, _, _ netip.AddrPort) (identity.Caller, error) {
	<-ctx.Done()
	return identity.Caller{}, ctx.Err()
}

// TestIdentifiedAtAccept: resolution starts when the connection is
// accepted, before any request, so the redirect record is read fresh.
func TestIdentifiedAtAccept(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{})
	h.dial(t, "app") // no request sent
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, total := h.ident.Calls(); total == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("connection accepted but not identified without a request")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHangingIdentifierThroughServer: a stuck Identify costs the caller
// IdentifyTimeout and a 503 + close, and does not block other callers'
// accepts.
func TestHangingIdentifierThroughServer(t *testing.T) {
	t.Parallel()
	ident := &selectiveHang{fakeIdentifier: newFakeIdentifier(), hang: mustAddr(callers["other"].ip)}
	srv, err := New(Config{IdentifyTimeout: 1500 * time.Millisecond}, Deps{Identifier: ident, Broker: newFakeBroker()}, quietLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	h := &harness{addr: ln.Addr().String()}

	stuck, _ := h.client(t, "other")
	res := make(chan [2]any, 1)
	start := time.Now()
	go func() { // no t.Fatal off the test goroutine: report through res
		req, _ := http.NewRequest("PUT", "http://169.254.169.254"+pToken, nil)
		req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
		resp, err := stuck.Do(req)
		if err != nil {
			res <- [2]any{err, false}
			return
		}
		resp.Body.Close()
		res <- [2]any{resp.StatusCode, resp.Close}
	}()
	// Meanwhile another caller is accepted and served at once.
	time.Sleep(50 * time.Millisecond)
	fast, _ := h.client(t, "app")
	t1 := time.Now()
	if code, _, _ := do(t, fast, "PUT", pToken, ttl21600); code != 200 || time.Since(t1) > 750*time.Millisecond {
		t.Fatalf("other caller: %d after %s while one Identify hangs", code, time.Since(t1))
	}
	r := <-res
	if r[0] != 503 || r[1] != true || time.Since(start) < 1400*time.Millisecond {
		t.Fatalf("hanging caller: status %v close %v after %s", r[0], r[1], time.Since(start))
	}
}

type selectiveHang struct {
	*fakeIdentifier
	hang netip.Addr
}

func (s *selectiveHang) Identify(ctx context.Context, peer, local netip.AddrPort) (identity.Caller, error) {
	if peer.Addr() == s.hang {
		<-ctx.Done()
		return identity.Caller{}, ctx.Err()
	}
	return s.fakeIdentifier.Identify(ctx, peer, local)
}

// TestTokenFloodOverHTTP: thousands of token PUTs from several callers
// over keep-alive connections leave the table within its caps, and every
// caller's newest token still works. Bounded in count (4 callers × 1500).
func TestTokenFloodOverHTTP(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpt{cfg: Config{Tokens: tokenCfg(256, 32)}, log: zap.NewNop()})
	var wg sync.WaitGroup
	for _, who := range []string{"app", "other", "host", "unknown"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _ := h.client(t, who)
			var last string
			for range 1500 {
				req, _ := http.NewRequest("PUT", "http://169.254.169.254"+pToken, nil)
				req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
				resp, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				last = string(b)
			}
			key := callers[who].caller
			key.Peer = netip.AddrPortFrom(mustAddr(callers[who].ip), 0) // unknown callers are keyed by IP
			if err := h.srv.tokens.Check(last, key.Key()); err != nil {
				t.Errorf("%s: newest token after the flood: %v", who, err)
			}
		}()
	}
	wg.Wait()
	if n := h.srv.tokens.Len(); n > 4*32 {
		t.Fatalf("%d tokens held after 6000 PUTs, caps 256 total / 32 per caller", n)
	}
	if v := counterValue(t, h.reg, "pdr_imds_tokens_live", nil); v != float64(h.srv.tokens.Len()) {
		t.Fatalf("live gauge %v, table %d", v, h.srv.tokens.Len())
	}
}

// A flood of connections beyond MaxConns is closed at accept; once they go
// away, a new caller is served again.
func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	srv, err := New(Config{IMDSv1: true, MaxConns: 3}, Deps{Identifier: newFakeIdentifier(), Broker: newFakeBroker(), Now: (&fakeClock{t: t0}).Now}, quietLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = srv.Serve(ctx, ln) }()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(callers["app"].ip)}}
	var held []net.Conn
	for i := 0; i < 3; i++ {
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// The fourth is accepted and closed at once: a read sees EOF, not a hang.
	extra, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := extra.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection over the limit: read %d, %v; want EOF or reset", n, err)
	}
	extra.Close()
	if got := counterValue(t, reg, "pdr_imds_connections_rejected_total", nil); got != 1 {
		t.Errorf("rejected connections = %v, want 1", got)
	}
	for _, c := range held {
		c.Close()
	}
	// Slots come back when connections close.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", pList)
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot freed after the held connections closed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
