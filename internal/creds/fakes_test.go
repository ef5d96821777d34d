package creds

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/fakeaws"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

const (
	testAccount    = "123456789012"
	testBaseRole   = "arn:aws:iam::123456789012:role/base"
	testBaseCaller = "arn:aws:sts::123456789012:assumed-role/base/host-cert"
	testExtRole    = "arn:aws:iam::123456789012:role/needs-ext"
)

func roleARN(name string) string { return "arn:aws:iam::123456789012:role/" + name }

// fakeClock is shared by the broker and the fake AWS store.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 4, 5, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Upstream fake modes.
const (
	upOK       = "ok"
	upEmpty    = "empty"   // aws_signing_helper after a failed refresh
	upFailCode = "code"    // Code != Success
	upExpired  = "expired" // keys present, Expiration in the past
	upGarbage  = "garbage"
	upStatus   = "500"
	upNoRole   = "norole"
)

// upstreamFake is an IMDSv2-shaped server like `aws_signing_helper serve`:
// one role, tokens required, credentials renewed when < 10 min remain.
type upstreamFake struct {
	store *fakeaws.Store
	clk   *fakeClock

	mu     sync.Mutex
	tokens map[string]time.Time
	cur    *fakeaws.Issued
	mode   string
	life   time.Duration // lifetime of issued base credentials (default 1h)

	puts     atomic.Int64
	credGets atomic.Int64
	unauth   atomic.Int64
}

func newUpstreamFake(t testing.TB, store *fakeaws.Store, clk *fakeClock) (*upstreamFake, *url.URL) {
	t.Helper()
	f := &upstreamFake{store: store, clk: clk, tokens: make(map[string]time.Time), mode: upOK}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return f, u
}

func (f *upstreamFake) setMode(m string) { f.mu.Lock(); f.mode = m; f.mu.Unlock() }

// revokeTokens forgets every token, as the helper does when it evicts.
func (f *upstreamFake) revokeTokens() {
	f.mu.Lock()
	clear(f.tokens)
	f.mu.Unlock()
}

func (f *upstreamFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	now := f.clk.Now()
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut {
			http.Error(w, "method", http.StatusMethodNotAllowed)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "ttl", http.StatusBadRequest)
			return
		}
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		tok := hex.EncodeToString(b)
		f.mu.Lock()
		f.tokens[tok] = now.Add(time.Duration(ttl) * time.Second)
		f.mu.Unlock()
		f.puts.Add(1)
		w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", strconv.Itoa(ttl))
		_, _ = w.Write([]byte(tok))
		return
	}
	f.mu.Lock()
	exp, ok := f.tokens[r.Header.Get("X-aws-ec2-metadata-token")]
	mode := f.mode
	f.mu.Unlock()
	if !ok || !now.Before(exp) {
		f.unauth.Add(1)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	const prefix = "/latest/meta-data/iam/security-credentials/"
	name, found := strings.CutPrefix(r.URL.Path, prefix)
	if !found {
		http.NotFound(w, r)
		return
	}
	if name == "" {
		if mode == upNoRole {
			return
		}
		_, _ = w.Write([]byte("base"))
		return
	}
	f.credGets.Add(1)
	doc := map[string]string{"Code": "Success", "LastUpdated": now.Format(time.RFC3339), "Type": "AWS-HMAC"}
	switch mode {
	case upStatus:
		http.Error(w, "boom", http.StatusInternalServerError)
		return
	case upGarbage:
		_, _ = w.Write([]byte("<html>not json"))
		return
	case upEmpty:
		doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"] = "", "", ""
		doc["Expiration"] = "0001-01-01T00:00:00Z"
	default:
		f.mu.Lock()
		if f.cur == nil || f.cur.Expiration.Sub(now) < 10*time.Minute {
			life := f.life
			if life == 0 {
				life = time.Hour
			}
			is := f.store.Issue(testAccount, testBaseRole, testBaseCaller, life, true)
			f.cur = &is
		}
		is := *f.cur
		f.mu.Unlock()
		doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"] = is.AccessKeyID, is.SecretAccessKey, is.SessionToken
		doc["Expiration"] = is.Expiration.Format(time.RFC3339)
		switch mode {
		case upFailCode:
			doc["Code"] = "Failure"
		case upExpired:
			doc["Expiration"] = now.Add(-time.Minute).Format(time.RFC3339)
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	_ = json.NewEncoder(w).Encode(doc)
}

type env struct {
	b    *Broker
	clk  *fakeClock
	sts  *fakeaws.STS
	up   *upstreamFake
	reg  *prometheus.Registry
	logs *observer.ObservedLogs
}

// newEnv builds a broker against an upstream fake and the STS fake, both
// on loopback, sharing one fake clock. The STS fake's skew check is
// widened because the SDK signs with the wall clock.
func newEnv(t testing.TB, mod func(*Config)) *env {
	t.Helper()
	clk := newFakeClock()
	store := fakeaws.NewStore(clk.Now)
	stsFake := fakeaws.NewSTS(store, fakeaws.STSConfig{
		Trust:   []fakeaws.TrustRule{{Principal: testBaseRole, Role: "arn:aws:iam::123456789012:role/*"}},
		Roles:   map[string]fakeaws.RolePolicy{testExtRole: {ExternalID: "ext-1"}},
		Region:  "us-east-1",
		MaxSkew: 100000 * time.Hour,
	})
	stsSrv := httptest.NewServer(stsFake)
	t.Cleanup(stsSrv.Close)
	up, upURL := newUpstreamFake(t, store, clk)
	obsCore, logs := observer.New(zapcore.WarnLevel)
	log := zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel)).WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, obsCore)
	}))
	cfg := Config{
		Upstream:    upURL,
		Region:      "us-east-1",
		STSEndpoint: stsSrv.URL,
		Now:         clk.Now,
		RefreshRate: 1000,
	}
	if mod != nil {
		mod(&cfg)
	}
	reg := prometheus.NewRegistry()
	b, err := New(cfg, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return &env{b: b, clk: clk, sts: stsFake, up: up, reg: reg, logs: logs}
}

// metric returns the value of a counter or gauge with the given labels.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m, labels) {
				if c := m.GetCounter(); c != nil {
					return c.GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func labelsMatch(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		ok := false
		for _, l := range m.GetLabel() {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// waitFor polls cond for up to 5 s of wall time.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
