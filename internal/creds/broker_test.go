package creds

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

func req(name string) Request {
	return Request{RoleARN: roleARN(name), SessionName: "c-" + name}
}

func TestGetColdConcurrentOneAssumeRole(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	r := req("cold")
	const n = 200
	var wg sync.WaitGroup
	keys := make([]string, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			c, _, err := e.b.Get(context.Background(), r)
			errs[i] = err
			if err == nil {
				keys[i] = c.AccessKeyID
			}
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Get %d: %v", i, err)
		}
		if keys[i] != keys[0] {
			t.Fatalf("Get %d returned key %s, Get 0 %s", i, keys[i], keys[0])
		}
	}
	if got := e.sts.RoleCalls(r.RoleARN); got != 1 {
		t.Errorf("AssumeRole calls = %d, want exactly 1 for %d concurrent cold requests", got, n)
	}
	if got := metric(t, e.reg, "pdr_sts_calls_total", "action", "AssumeRole"); got != 1 {
		t.Errorf("pdr_sts_calls_total{AssumeRole} = %v", got)
	}
	if got := e.up.puts.Load(); got != 1 {
		t.Errorf("upstream token PUTs = %d, want 1", got)
	}
}

func TestGetWarmHitsMakeNoSTSCalls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	first, hit, err := e.b.Get(context.Background(), req("warm"))
	if err != nil || hit {
		t.Fatalf("first Get: hit=%v err=%v", hit, err)
	}
	if first.AccountID != testAccount || first.RoleARN != roleARN("warm") {
		t.Errorf("first = account %q role %q", first.AccountID, first.RoleARN)
	}
	before := e.sts.Calls("AssumeRole")
	for i := range 100 {
		e.clk.Advance(10 * time.Second) // 1000 s in all: still before refresh
		c, hit, err := e.b.Get(context.Background(), req("warm"))
		if err != nil || !hit || c != first {
			t.Fatalf("Get %d: hit=%v err=%v same=%v", i, hit, err, c == first)
		}
	}
	if got := e.sts.Calls("AssumeRole") - before; got != 0 {
		t.Errorf("warm Gets made %d STS calls, want 0", got)
	}
	if got := metric(t, e.reg, "pdr_credential_cache_hits_total"); got != 100 {
		t.Errorf("hits = %v, want 100", got)
	}
	if got := metric(t, e.reg, "pdr_credential_cache_misses_total"); got != 1 {
		t.Errorf("misses = %v, want 1", got)
	}
	// Another session name or external id is another cache entry.
	other := req("warm")
	other.SessionName = "c-other"
	if _, hit, err := e.b.Get(context.Background(), other); err != nil || hit {
		t.Errorf("other session: hit=%v err=%v", hit, err)
	}
	if got := metric(t, e.reg, "pdr_credential_cache_entries"); got != 2 {
		t.Errorf("cache entries = %v, want 2", got)
	}
}

func TestBackgroundRefreshAhead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil) // 1h sessions, RefreshBefore 20m (+ up to 5m jitter)
	r := req("ahead")
	c1, _, err := e.b.Get(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	exp := c1.Expiration
	e.clk.Advance(exp.Sub(e.clk.Now()) - 26*time.Minute)
	if due := e.b.cache.due(e.clk.Now(), e.clk.Now().Add(-time.Hour)); len(due) != 0 {
		t.Fatalf("due at 26m before expiry: %v", due)
	}
	if c, hit, _ := e.b.Get(context.Background(), r); !hit || c != c1 {
		t.Fatal("Get at 26m before expiry was not a hit on the first credential")
	}
	e.clk.Advance(6*time.Minute + time.Second) // 19m59s before expiry: due whatever the jitter
	e.b.refreshDue()
	waitFor(t, "background refresh", func() bool { return e.sts.RoleCalls(r.RoleARN) == 2 })
	waitFor(t, "refreshed entry stored", func() bool {
		s, _ := e.b.cache.peek(cacheKey(r))
		return s.creds != c1
	})
	c2, hit, err := e.b.Get(context.Background(), r)
	if err != nil || !hit {
		t.Fatalf("Get after refresh: hit=%v err=%v", hit, err)
	}
	if c2.AccessKeyID == c1.AccessKeyID || c2.Expiration.Sub(e.clk.Now()) < 59*time.Minute {
		t.Errorf("not refreshed: same key %v, %v left", c2.AccessKeyID == c1.AccessKeyID, c2.Expiration.Sub(e.clk.Now()))
	}
	if got := e.sts.RoleCalls(r.RoleARN); got != 2 {
		t.Errorf("AssumeRole calls = %d, want 2", got)
	}
	waitFor(t, "refresh metric", func() bool {
		return metric(t, e.reg, "pdr_credential_refreshes_total", "result", "ok") == 1
	})
}

func TestIdleEntriesAreNotRefreshed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	r := req("idle")
	if _, _, err := e.b.Get(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(41 * time.Minute)
	e.b.refreshDue() // used 41m ago: within the session, refreshed once
	waitFor(t, "first refresh", func() bool { return e.sts.RoleCalls(r.RoleARN) == 2 })
	waitFor(t, "claim released", func() bool { s, _ := e.b.cache.peek(cacheKey(r)); return !s.refreshing })
	e.clk.Advance(40 * time.Minute) // 81m since last use
	if due := e.b.cache.due(e.clk.Now(), e.clk.Now().Add(-time.Hour)); len(due) != 0 {
		t.Errorf("idle entry still refreshed: %v", due)
	}
}

func TestGetDueEntryRefreshesBehindTheAnswer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	r := req("async")
	c1, _, err := e.b.Get(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(c1.Expiration.Sub(e.clk.Now()) - 18*time.Minute) // due, 18m > 15m left
	c, hit, err := e.b.Get(context.Background(), r)
	if err != nil || !hit || c != c1 {
		t.Fatalf("due Get: hit=%v err=%v same=%v", hit, err, c == c1)
	}
	waitFor(t, "async refresh", func() bool {
		s, _ := e.b.cache.peek(cacheKey(r))
		return s.creds != c1
	})
	if got := e.sts.RoleCalls(r.RoleARN); got != 2 {
		t.Errorf("AssumeRole calls = %d, want 2", got)
	}
}

func TestGetNearExpiryRefreshesSynchronously(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	r := req("sync")
	c1, _, err := e.b.Get(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(c1.Expiration.Sub(e.clk.Now()) - 10*time.Minute)
	c2, hit, err := e.b.Get(context.Background(), r)
	if err != nil || hit {
		t.Fatalf("hit=%v err=%v", hit, err)
	}
	if c2.AccessKeyID == c1.AccessKeyID || c2.Expiration.Sub(e.clk.Now()) < 59*time.Minute {
		t.Errorf("got old or short credential: %v left", c2.Expiration.Sub(e.clk.Now()))
	}
}

func TestStaleOnError(t *testing.T) {
	t.Parallel()
	faults := []struct {
		name     string
		set      func(e *env)
		wantCode string
	}{
		{"5xx", func(e *env) { e.sts.SetFailAll(true) }, "InternalFailure"},
		{"throttle", func(e *env) { e.sts.SetThrottleFraction(1) }, "Throttling"},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, nil)
			r := req("stale")
			c1, _, err := e.b.Get(context.Background(), r)
			if err != nil {
				t.Fatal(err)
			}
			f.set(e)
			e.clk.Advance(c1.Expiration.Sub(e.clk.Now()) - 10*time.Minute)
			c, hit, err := e.b.Get(context.Background(), r)
			if err != nil || !hit || c != c1 {
				t.Fatalf("with STS failing and 10m left: hit=%v err=%v same=%v", hit, err, c == c1)
			}
			if n := e.logs.FilterMessage("serving cached credentials after refresh failure").Len(); n != 1 {
				t.Errorf("stale serve logged %d times, want 1", n)
			}
			if got := metric(t, e.reg, "pdr_sts_errors_total", "action", "AssumeRole", "code", f.wantCode); got < 1 {
				t.Errorf("pdr_sts_errors_total{%s} = %v", f.wantCode, got)
			}
			// Backoff: the next request within retryAfter does not wait on STS.
			calls := e.sts.Calls("AssumeRole")
			if _, hit, err := e.b.Get(context.Background(), r); err != nil || !hit {
				t.Fatalf("second stale Get: hit=%v err=%v", hit, err)
			}
			if got := e.sts.Calls("AssumeRole") - calls; got != 0 {
				t.Errorf("STS called %d times during backoff", got)
			}
			// Under a minute left: the stale credential is no longer handed out.
			e.clk.Advance(9*time.Minute + 30*time.Second)
			c, _, err = e.b.Get(context.Background(), r)
			var ae *AssumeError
			if !errors.Is(err, ErrSTS) || !errors.As(err, &ae) || ae.Code != f.wantCode || c != nil {
				t.Fatalf("30s left: c=%v err=%v, want ErrSTS with code %s", c, err, f.wantCode)
			}
			// No cached credential at all: ErrSTS with the code.
			_, _, err = e.b.Get(context.Background(), req("never-cached"))
			if !errors.Is(err, ErrSTS) || !strings.Contains(err.Error(), f.wantCode) {
				t.Fatalf("uncached: %v", err)
			}
		})
	}
}

func TestAccessDeniedAndExternalID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	tests := []struct {
		name     string
		req      Request
		wantCode string
	}{
		{"external id right", Request{RoleARN: testExtRole, ExternalID: "ext-1", SessionName: "s1"}, ""},
		{"external id missing", Request{RoleARN: testExtRole, SessionName: "s1"}, "AccessDenied"},
		{"external id wrong", Request{RoleARN: testExtRole, ExternalID: "bad", SessionName: "s1"}, "AccessDenied"},
		{"untrusted", Request{RoleARN: "arn:aws:iam::999999999999:role/x", SessionName: "s1"}, "AccessDenied"},
		{"bad session name", Request{RoleARN: roleARN("x"), SessionName: "a b"}, "ValidationError"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _, err := e.b.Get(context.Background(), tt.req)
			if tt.wantCode == "" {
				if err != nil || c.RoleARN != tt.req.RoleARN {
					t.Fatalf("err=%v", err)
				}
				return
			}
			var ae *AssumeError
			if !errors.Is(err, ErrSTS) || !errors.As(err, &ae) || ae.Code != tt.wantCode {
				t.Fatalf("err = %v, want ErrSTS %s", err, tt.wantCode)
			}
		})
	}
}

// TestNeverExpired walks a fake clock over ~12 hours in random steps with
// STS and upstream faults switching on and off, and checks every answer:
// never a credential with under a minute left; with everything healthy
// (and no failure backoff pending), always one with over 15 minutes left.
func TestNeverExpired(t *testing.T) {
	t.Parallel()
	// No SDK retries: their real-time backoff would only slow the walk.
	e := newEnv(t, func(c *Config) { c.STSMaxAttempts = 1 })
	rng := rand.New(rand.NewPCG(1, 2))
	reqs := []Request{req("p1"), req("p2"), req("p3")}
	var lastFault, stsOutage, upOutage time.Time
	var served, errs, strict int
	for step := range 3000 {
		// Let refreshes started in the last step finish under its faults
		// and clock, so this step's health is what Get sees.
		waitIdle(t, e.b)
		e.clk.Advance(time.Duration(rng.Int64N(int64(40 * time.Second))))
		now := e.clk.Now()
		// Long outages (up to 70m, so cached sessions run out) plus flaps.
		if now.After(stsOutage) && rng.IntN(150) == 0 {
			stsOutage = now.Add(time.Duration(rng.Int64N(int64(70 * time.Minute))))
		}
		if now.After(upOutage) && rng.IntN(300) == 0 {
			upOutage = now.Add(time.Duration(rng.Int64N(int64(70 * time.Minute))))
		}
		stsDown := now.Before(stsOutage) || rng.IntN(10) == 0
		upDown := now.Before(upOutage) || rng.IntN(20) == 0
		e.sts.SetFailAll(stsDown)
		if upDown {
			e.up.setMode(upEmpty)
		} else {
			e.up.setMode(upOK)
		}
		if stsDown || upDown {
			lastFault = now
		}
		if step%7 == 0 {
			e.b.refreshDue()
		}
		r := reqs[rng.IntN(len(reqs))]
		c, _, err := e.b.Get(context.Background(), r)
		if err != nil {
			errs++
			if !errors.Is(err, ErrSTS) && !errors.Is(err, ErrUpstream) {
				t.Fatalf("step %d: error wraps neither ErrSTS nor ErrUpstream: %v", step, err)
			}
			if now.Sub(lastFault) > retryAfter {
				t.Fatalf("step %d: healthy, yet error: %v", step, err)
			}
			continue
		}
		served++
		left := c.Expiration.Sub(now)
		if left < minServe {
			t.Fatalf("step %d at %s: served credential with %v left", step, now, left)
		}
		if c.RoleARN != r.RoleARN {
			t.Fatalf("step %d: served role %s for %s", step, c.RoleARN, r.RoleARN)
		}
		if now.Sub(lastFault) > retryAfter {
			strict++
			if left <= handoutTarget {
				t.Fatalf("step %d: healthy, yet only %v left", step, left)
			}
		}
	}
	t.Logf("served %d (strictly checked %d), errors %d, AssumeRole calls %d", served, strict, errs, e.sts.Calls("AssumeRole"))
	if strict < 500 || errs < 20 {
		t.Errorf("walk did not exercise both regimes: strict=%d errs=%d", strict, errs)
	}
}

// waitIdle waits until no cache entry has a refresh queued or running.
func waitIdle(t testing.TB, b *Broker) {
	t.Helper()
	waitFor(t, "refreshes to settle", func() bool {
		b.cache.mu.Lock()
		defer b.cache.mu.Unlock()
		for _, e := range b.cache.m {
			if e.refreshing {
				return false
			}
		}
		return true
	})
}

func TestCacheIsBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.CacheSize = 8 })
	for i := range 20 {
		if _, _, err := e.b.Get(context.Background(), req(fmt.Sprintf("r%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.b.cache.len(); got != 8 {
		t.Errorf("entries = %d, want 8", got)
	}
	if got := metric(t, e.reg, "pdr_credential_cache_evictions_total"); got != 12 {
		t.Errorf("evictions = %v, want 12", got)
	}
	// The 8 most recent hit; an evicted one costs a new AssumeRole.
	for i := 12; i < 20; i++ {
		if _, hit, err := e.b.Get(context.Background(), req(fmt.Sprintf("r%d", i))); err != nil || !hit {
			t.Errorf("r%d: hit=%v err=%v", i, hit, err)
		}
	}
	if _, hit, err := e.b.Get(context.Background(), req("r0")); err != nil || hit {
		t.Errorf("evicted r0: hit=%v err=%v", hit, err)
	}
	if got := e.sts.RoleCalls(roleARN("r0")); got != 2 {
		t.Errorf("r0 AssumeRole calls = %d, want 2", got)
	}
}

func TestPrefetch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	r := req("pre")
	e.b.Prefetch(r)
	waitFor(t, "prefetch", func() bool { _, ok := e.b.cache.peek(cacheKey(r)); return ok })
	if _, hit, err := e.b.Get(context.Background(), r); err != nil || !hit {
		t.Fatalf("after prefetch: hit=%v err=%v", hit, err)
	}
	e.b.Prefetch(r) // fresh: no new call
	if got := e.sts.RoleCalls(r.RoleARN); got != 1 {
		t.Errorf("AssumeRole calls = %d, want 1", got)
	}
}

func TestRunStopsAndOwnsGoroutines(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.RefreshInterval = time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.b.Run(ctx) }()
	r := req("run")
	c1, _, err := e.b.Get(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(c1.Expiration.Sub(e.clk.Now()) - 19*time.Minute)
	waitFor(t, "Run's refresh", func() bool { return e.sts.RoleCalls(r.RoleARN) == 2 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil on cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	e.b.Prefetch(req("after-stop"))
	time.Sleep(20 * time.Millisecond)
	if got := e.sts.RoleCalls(roleARN("after-stop")); got != 0 {
		t.Errorf("Prefetch after stop made %d calls", got)
	}
	// Requests still work after the background has stopped.
	if _, hit, err := e.b.Get(context.Background(), req("after-stop")); err != nil || hit {
		t.Errorf("Get after stop: hit=%v err=%v", hit, err)
	}
	if got := e.sts.Calls("GetCallerIdentity"); got != 1 {
		t.Errorf("GetCallerIdentity calls = %d, want 1 (Run resolves identity)", got)
	}
}

func TestIdentityAndBase(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for range 3 {
		id, err := e.b.Identity(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want := Identity{Account: testAccount, Partition: "aws", ARN: testBaseCaller, RoleName: "base", RoleARN: testBaseRole}
		if id != want {
			t.Errorf("Identity = %+v, want %+v", id, want)
		}
	}
	if got := e.sts.Calls("GetCallerIdentity"); got != 1 {
		t.Errorf("GetCallerIdentity calls = %d, want 1", got)
	}
	c, err := e.b.Base(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c.AccountID != testAccount || c.RoleARN != testBaseRole || !usable(c, e.clk.Now()) {
		t.Errorf("Base = account %q role %q exp %v", c.AccountID, c.RoleARN, c.Expiration)
	}
	if err := e.b.UpstreamReady(context.Background()); err != nil {
		t.Errorf("UpstreamReady: %v", err)
	}
}

func TestIdentityFromARN(t *testing.T) {
	t.Parallel()
	tests := []struct {
		arn  string
		want Identity
	}{
		{"arn:aws:sts::123456789012:assumed-role/base/sess", Identity{Account: "123456789012", Partition: "aws", RoleName: "base", RoleARN: "arn:aws:iam::123456789012:role/base"}},
		{"arn:aws-cn:sts::123456789012:assumed-role/b/s", Identity{Account: "123456789012", Partition: "aws-cn", RoleName: "b", RoleARN: "arn:aws-cn:iam::123456789012:role/b"}},
		{"arn:aws:iam::123456789012:user/alice", Identity{Account: "123456789012", Partition: "aws"}},
	}
	for _, tt := range tests {
		tt.want.ARN = tt.arn
		if got := identityFromARN(tt.arn, ""); got != tt.want {
			t.Errorf("identityFromARN(%q) = %+v, want %+v", tt.arn, got, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{}, ""},
		{"chained over 1h", Config{SessionDuration: 2 * time.Hour}, "role chaining"},
		{"below 15m", Config{SessionDuration: 10 * time.Minute}, "minimum"},
		{"15m session default refresh", Config{SessionDuration: 15 * time.Minute}, ""},
		{"refresh too small", Config{RefreshBefore: time.Minute}, "at least 5m"},
		{"refresh too large", Config{RefreshBefore: 58 * time.Minute}, "at most"},
		{"fractional seconds", Config{SessionDuration: 30*time.Minute + time.Millisecond}, "whole seconds"},
		{"bad sts endpoint", Config{STSEndpoint: "::"}, "sts endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.cfg.Validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Validate = %v, want %q", err, tt.wantErr)
			}
		})
	}
	var c Config
	c.setDefaults()
	if c.RefreshBefore != 20*time.Minute || c.SessionDuration != time.Hour || c.Upstream.String() != DefaultUpstream {
		t.Errorf("defaults: %+v", c)
	}
}

func BenchmarkGetWarm(b *testing.B) {
	e := newEnv(b, nil)
	r := req("bench")
	if _, _, err := e.b.Get(context.Background(), r); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, hit, err := e.b.Get(ctx, r); err != nil || !hit {
			b.Fatal(hit, err)
		}
	}
}

func BenchmarkGetWarmParallel(b *testing.B) {
	e := newEnv(b, nil)
	r := req("bench")
	if _, _, err := e.b.Get(context.Background(), r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := e.b.Get(context.Background(), r); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func TestSessionDurationAndDetachedFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.SessionDuration = 30 * time.Minute })
	r := req("slow")
	e.sts.SetLatency(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := e.b.Get(ctx, r); !errors.Is(err, ErrSTS) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with 50ms deadline against 300ms STS: %v", err)
	}
	// The STS call went on without the impatient caller and filled the cache.
	waitFor(t, "detached flight to store", func() bool { _, ok := e.b.cache.peek(cacheKey(r)); return ok })
	e.sts.SetLatency(0)
	c, hit, err := e.b.Get(context.Background(), r)
	if err != nil || !hit {
		t.Fatalf("after detached flight: hit=%v err=%v", hit, err)
	}
	if got := e.sts.RoleCalls(r.RoleARN); got != 1 {
		t.Errorf("AssumeRole calls = %d, want 1", got)
	}
	if left := c.Expiration.Sub(e.clk.Now()); left > 30*time.Minute || left < 29*time.Minute {
		t.Errorf("lifetime %v, want the configured 30m", left)
	}
}

func TestSyncBelowScalesWithLifetime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	t0 := e.clk.Now()
	tests := []struct {
		life, want time.Duration
	}{
		{time.Hour, 15 * time.Minute},
		{20 * time.Minute, 5 * time.Minute},
		{2 * time.Minute, 30 * time.Second},
	}
	for _, tt := range tests {
		c := &Credentials{LastUpdated: t0, Expiration: t0.Add(tt.life)}
		if got := e.b.syncBelow(c); got != tt.want {
			t.Errorf("syncBelow(life %v) = %v, want %v", tt.life, got, tt.want)
		}
	}
}

// TestCachedUnderAMinuteNeverServed plants a cached credential with 50s
// left whose refresh time lies in the future (as a very short session
// would have): Get must fetch a new one instead of answering from cache.
func TestCachedUnderAMinuteNeverServed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	r := req("short")
	now := e.clk.Now()
	short := &Credentials{AccessKeyID: "ASIASHORT", SecretAccessKey: "s", SessionToken: "t",
		LastUpdated: now.Add(-time.Minute), Expiration: now.Add(50 * time.Second), RoleARN: r.RoleARN}
	e.b.cache.put(cacheKey(r), short, now.Add(time.Hour), now)
	c, hit, err := e.b.Get(context.Background(), r)
	if err != nil || hit || c == short || c.Expiration.Sub(now) < 59*time.Minute {
		t.Fatalf("hit=%v err=%v short=%v", hit, err, c == short)
	}
	// With STS down the 50s credential is still not handed out.
	e.b.cache.put(cacheKey(Request{RoleARN: r.RoleARN, SessionName: "other"}), short, now.Add(time.Hour), now)
	e.sts.SetFailAll(true)
	if c, _, err := e.b.Get(context.Background(), Request{RoleARN: r.RoleARN, SessionName: "other"}); !errors.Is(err, ErrSTS) || c != nil {
		t.Fatalf("STS down, 50s cached: c=%v err=%v", c, err)
	}
}
