package imds

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/per-docker-roles/per-docker-roles/internal/creds"
	"github.com/per-docker-roles/per-docker-roles/internal/docker"
	"github.com/per-docker-roles/per-docker-roles/internal/identity"
	"github.com/per-docker-roles/per-docker-roles/internal/token"
)

// t0 is the fake clock's start; every fixed credential is relative to it,
// so goldens are stable.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

const (
	account = "123456789012"
	baseARN = "arn:aws:sts::123456789012:assumed-role/host-role/cert-0001"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// caller is one identity the fake Identifier hands out, keyed by the
// loopback source address a test dials from.
type caller struct {
	ip     string
	caller identity.Caller
	err    error
}

func containerCaller(name, idChar string, cgroup uint64, labels map[string]string) identity.Caller {
	id := ""
	for range 64 {
		id += idChar
	}
	return identity.Caller{
		Kind:      identity.KindContainer,
		CgroupID:  cgroup,
		Container: docker.Container{ID: id, Name: name, Labels: labels},
	}
}

func role(v string) map[string]string { return map[string]string{"per-docker-roles.role": v} }

// callers is the cast of every test: each gets its own 127.0.0.x.
var callers = map[string]caller{
	"app":          {ip: "127.0.0.2", caller: containerCaller("app", "a", 1001, map[string]string{"per-docker-roles.role": "app-role", "per-docker-roles.external-id": "ext-123"})},
	"other":        {ip: "127.0.0.3", caller: containerCaller("other", "b", 1002, role("other-role"))},
	"host":         {ip: "127.0.0.4", caller: identity.Caller{Kind: identity.KindHost}},
	"unknown":      {ip: "127.0.0.5", caller: identity.Caller{Kind: identity.KindUnknown}},
	"nolabel":      {ip: "127.0.0.6", caller: containerCaller("nolabel", "c", 1003, map[string]string{"com.example": "x"})},
	"notallowed":   {ip: "127.0.0.7", caller: containerCaller("notallowed", "d", 1004, role("arn:aws:iam::999999999999:role/elsewhere"))},
	"notsynced":    {ip: "127.0.0.8", err: fmt.Errorf("identify: %w", identity.ErrNotSynced)},
	"norecord":     {ip: "127.0.0.9", err: fmt.Errorf("lookup: %w", identity.ErrNoRecord)},
	"stsdown":      {ip: "127.0.0.10", caller: containerCaller("stsdown", "e", 1005, role("sts-down-role"))},
	"upstreamgone": {ip: "127.0.0.11", caller: containerCaller("upstreamgone", "f", 1006, role("upstream-gone-role"))},
	"stale":        {ip: "127.0.0.12", caller: containerCaller("stale", "1", 1007, role("stale-role"))},
	"malformed":    {ip: "127.0.0.13", caller: containerCaller("malformed", "2", 1008, role("bad role!"))},
	"pathrole":     {ip: "127.0.0.14", caller: containerCaller("pathrole", "3", 1009, role("team/app/path-role"))},
}

// fakeIdentifier maps the peer's address to a caller and counts calls per
// connection (peer addr:port).
type fakeIdentifier struct {
	mu    sync.Mutex
	byIP  map[netip.Addr]caller
	calls map[netip.AddrPort]int
	total int
}

func newFakeIdentifier() *fakeIdentifier {
	f := &fakeIdentifier{byIP: map[netip.Addr]caller{}, calls: map[netip.AddrPort]int{}}
	for _, c := range callers {
		f.byIP[netip.MustParseAddr(c.ip)] = c
	}
	return f
}

func (f *fakeIdentifier) Identify(_ context.Context, peer, _ netip.AddrPort) (identity.Caller, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[peer]++
	f.total++
	c, ok := f.byIP[peer.Addr()]
	if !ok {
		return identity.Caller{Kind: identity.KindUnknown, Peer: peer}, nil
	}
	if c.err != nil {
		return identity.Caller{}, c.err
	}
	id := c.caller
	id.Peer = peer
	return id, nil
}

func (f *fakeIdentifier) Calls() (perConn map[netip.AddrPort]int, total int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[netip.AddrPort]int, len(f.calls))
	for k, v := range f.calls {
		m[k] = v
	}
	return m, f.total
}

// fixedCreds are credentials with values derived from the role only.
func fixedCreds(roleARN, akid string, life time.Duration) *creds.Credentials {
	return &creds.Credentials{
		AccessKeyID:     akid,
		SecretAccessKey: "SECRET" + akid,
		SessionToken:    "SESSIONTOKEN" + akid,
		Expiration:      t0.Add(life),
		LastUpdated:     t0,
		AccountID:       account,
		RoleARN:         roleARN,
	}
}

type brokerResult struct {
	c   *creds.Credentials
	hit bool
	err error
}

// fakeBroker serves fixed credentials per role ARN and records requests.
type fakeBroker struct {
	mu      sync.Mutex
	byRole  map[string]brokerResult
	base    *creds.Credentials
	baseErr error
	baseARN string
	reqs    []creds.Request
	panicOn string // role ARN whose Get panics
	quiet   bool   // do not record requests (benchmarks)
}

func newFakeBroker() *fakeBroker {
	r := func(name string) string { return "arn:aws:iam::123456789012:role/" + name }
	return &fakeBroker{
		byRole: map[string]brokerResult{
			r("app-role"):           {c: fixedCreds(r("app-role"), "ASIAAPPROLE000000001", time.Hour), hit: true},
			r("other-role"):         {c: fixedCreds(r("other-role"), "ASIAOTHERROLE0000001", time.Hour)},
			r("team/app/path-role"): {c: fixedCreds(r("team/app/path-role"), "ASIAPATHROLE00000001", time.Hour), hit: true},
			r("sts-down-role"):      {err: fmt.Errorf("assume role %s: %w", r("sts-down-role"), creds.ErrSTS)},
			r("upstream-gone-role"): {err: fmt.Errorf("base credentials: %w", creds.ErrUpstream)},
			// What the upstream helper hands out when its refresh fails.
			r("stale-role"): {c: &creds.Credentials{Expiration: time.Time{}, LastUpdated: t0}},
		},
		base:    fixedCreds("arn:aws:iam::123456789012:role/host-role", "ASIAHOSTBASE00000001", 6*time.Hour),
		baseARN: baseARN,
	}
}

func (b *fakeBroker) Get(_ context.Context, req creds.Request) (*creds.Credentials, bool, error) {
	b.mu.Lock()
	if !b.quiet {
		b.reqs = append(b.reqs, req)
	}
	res, ok := b.byRole[req.RoleARN]
	panicOn := b.panicOn
	b.mu.Unlock()
	if req.RoleARN == panicOn {
		panic("broker exploded")
	}
	if !ok {
		return nil, false, fmt.Errorf("assume role %s: %w", req.RoleARN, creds.ErrSTS)
	}
	return res.c, res.hit, res.err
}

func (b *fakeBroker) Base(context.Context) (*creds.Credentials, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.base, b.baseErr
}

func (b *fakeBroker) BaseARN(context.Context) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.baseARN == "" {
		return "", fmt.Errorf("base arn: %w", creds.ErrUpstream)
	}
	return b.baseARN, nil
}

func (b *fakeBroker) Requests() []creds.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]creds.Request(nil), b.reqs...)
}

// harness is one Server serving on a loopback listener.
type harness struct {
	srv    *Server
	addr   string // host:port
	clock  *fakeClock
	ident  *fakeIdentifier
	broker *fakeBroker
	reg    *prometheus.Registry
}

type harnessOpt struct {
	cfg Config
	log *zap.Logger
}

func newHarness(t testing.TB, o harnessOpt) *harness {
	t.Helper()
	h := &harness{
		clock:  &fakeClock{t: t0},
		ident:  newFakeIdentifier(),
		broker: newFakeBroker(),
		reg:    prometheus.NewRegistry(),
	}
	log := o.log
	if log == nil {
		log = zaptest.NewLogger(t)
	}
	srv, err := New(o.cfg, Deps{Identifier: h.ident, Broker: h.broker, Now: h.clock.Now}, log, h.reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return h
}

// dial connects to the harness from the named caller's loopback address.
func (h *harness) dial(t testing.TB, who string) net.Conn {
	t.Helper()
	c, ok := callers[who]
	if !ok {
		t.Fatalf("no caller %q", who)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(c.ip)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", h.addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", c.ip, err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return conn
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func tokenCfg(total, perCaller int) token.Config {
	return token.Config{MaxTokens: total, MaxPerCaller: perCaller}
}
