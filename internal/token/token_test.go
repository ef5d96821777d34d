package token

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeClock is a settable clock shared by a test and its Store.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
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

func mustMint(t testing.TB, s *Store, caller string, ttl time.Duration) string {
	t.Helper()
	tok, err := s.Mint(caller, ttl)
	if err != nil {
		t.Fatalf("Mint(%q, %s): %v", caller, ttl, err)
	}
	return tok
}

func TestMintCheck(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := New(Config{}, clk.Now)
	a := mustMint(t, s, "container:a", 300*time.Second)
	if len(a) < 43 {
		t.Fatalf("token %d chars, want ≥43 (32 random bytes)", len(a))
	}
	if b := mustMint(t, s, "container:a", 300*time.Second); b == a {
		t.Fatal("two mints returned the same token")
	}

	tests := []struct {
		name   string
		tok    string
		caller string
		adv    time.Duration
		want   error
	}{
		{"valid", a, "container:a", 0, nil},
		{"missing", "", "container:a", 0, ErrMissing},
		{"malformed short", "abc", "container:a", 0, ErrInvalid},
		{"malformed chars", strings.Repeat("!", 43), "container:a", 0, ErrInvalid},
		{"unknown", strings.Repeat("A", 43), "container:a", 0, ErrInvalid},
		{"foreign", a, "container:b", 0, ErrForeign},
		{"foreign host", a, "host", 0, ErrForeign},
		{"just before expiry", a, "container:a", 299 * time.Second, nil},
		{"at expiry", a, "container:a", time.Second, ErrExpired},
		{"after expiry is gone", a, "container:a", 0, ErrInvalid},
	}
	// Rows run in order: the clock only moves forward.
	for _, tt := range tests {
		clk.Advance(tt.adv)
		if err := s.Check(tt.tok, tt.caller); !errors.Is(err, tt.want) {
			t.Errorf("%s: Check = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestMintRejectsBadTTL(t *testing.T) {
	t.Parallel()
	s := New(Config{}, nil)
	for _, ttl := range []time.Duration{0, -time.Second} {
		if _, err := s.Mint("host", ttl); !errors.Is(err, ErrTTL) {
			t.Errorf("Mint ttl %s: err %v, want ErrTTL", ttl, err)
		}
	}
}

func TestPerCallerCapEvictsEarliestExpiring(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := New(Config{MaxTokens: 100, MaxPerCaller: 3}, clk.Now)
	short := mustMint(t, s, "c", 10*time.Second)
	long1 := mustMint(t, s, "c", 1000*time.Second)
	long2 := mustMint(t, s, "c", 1000*time.Second)
	other := mustMint(t, s, "d", time.Second) // other callers are untouched
	newest := mustMint(t, s, "c", 500*time.Second)

	if err := s.Check(short, "c"); !errors.Is(err, ErrInvalid) {
		t.Errorf("earliest-expiring token of c: %v, want evicted (ErrInvalid)", err)
	}
	for _, tok := range []string{long1, long2, newest} {
		if err := s.Check(tok, "c"); err != nil {
			t.Errorf("kept token of c: %v", err)
		}
	}
	if err := s.Check(other, "d"); err != nil {
		t.Errorf("token of d: %v", err)
	}
}

func TestGlobalCapEvictsExpiredThenEarliest(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := New(Config{MaxTokens: 3, MaxPerCaller: 3}, clk.Now)
	expired := mustMint(t, s, "a", time.Second)
	soon := mustMint(t, s, "b", 100*time.Second)
	late := mustMint(t, s, "c", 1000*time.Second)
	clk.Advance(2 * time.Second)

	t1 := mustMint(t, s, "d", 50*time.Second) // room made by dropping the expired one
	if err := s.Check(soon, "b"); err != nil {
		t.Fatalf("soon evicted while an expired token was available: %v", err)
	}
	if err := s.Check(expired, "a"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("expired token: %v, want dropped", err)
	}
	t2 := mustMint(t, s, "e", 2000*time.Second) // full, nothing expired: t1 expires first
	if err := s.Check(t1, "d"); !errors.Is(err, ErrInvalid) {
		t.Errorf("earliest-expiring t1: %v, want evicted", err)
	}
	for caller, tok := range map[string]string{"b": soon, "c": late, "e": t2} {
		if err := s.Check(tok, caller); err != nil {
			t.Errorf("token of %s: %v", caller, err)
		}
	}
	if n := s.Len(); n != 3 {
		t.Errorf("Len = %d, want 3", n)
	}
}

// TestFloodStaysBounded is the memory claim: 1e5 mints from many callers
// and from one caller never hold more than the caps, and heap use after
// the flood is bounded by the table size, not by the number of mints.
func TestFloodStaysBounded(t *testing.T) {
	t.Parallel()
	const mints = 100_000
	clk := newClock()
	reg := prometheus.NewRegistry()
	s := New(Config{MaxTokens: 1000, MaxPerCaller: 8}, clk.Now)
	if err := s.Register(reg); err != nil {
		t.Fatal(err)
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range mints {
		caller := fmt.Sprintf("peer:%d", i%5000)
		if i%2 == 0 {
			caller = "container:one"
		}
		mustMint(t, s, caller, time.Duration(1+i%21600)*time.Second)
		if n := s.Len(); n > 1000 {
			t.Fatalf("after %d mints Len = %d > cap 1000", i+1, n)
		}
	}
	s.mu.Lock()
	perOne, callers, heapLen := len(s.byCaller["container:one"]), len(s.byCaller), len(s.byExpiry)
	s.mu.Unlock()
	if perOne > 8 {
		t.Errorf("container:one holds %d tokens, cap 8", perOne)
	}
	if heapLen != s.Len() || callers > 1000 {
		t.Errorf("index sizes: heap %d, callers %d, tokens %d", heapLen, callers, s.Len())
	}
	if got := metricValue(t, reg, "pdr_imds_tokens_live"); got != float64(s.Len()) {
		t.Errorf("live gauge = %v, want %d", got, s.Len())
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d mints: %d tokens held, heap grew %d bytes", mints, s.Len(), grown)
	// 1000 entries are well under 1 MiB; 1e5 unbounded entries would be ~20 MiB.
	if grown > 4<<20 {
		t.Errorf("heap grew %d bytes over the flood, want < 4 MiB", grown)
	}
}

// metricValue reads a gauge or counter without prometheus/testutil (which
// would need go.sum entries the lead has not added).
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func TestEvictionCounter(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := New(Config{MaxTokens: 2, MaxPerCaller: 2}, newClock().Now)
	if err := s.Register(reg); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		mustMint(t, s, "x", time.Minute)
	}
	if got := metricValue(t, reg, "pdr_imds_tokens_evicted_total"); got != 3 {
		t.Errorf("evicted counter = %v, want 3 (5 mints, cap 2)", got)
	}
}

func TestConcurrent(t *testing.T) {
	t.Parallel()
	s := New(Config{MaxTokens: 256, MaxPerCaller: 16}, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			caller := fmt.Sprintf("c%d", g)
			for range 2000 {
				tok, err := s.Mint(caller, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				// Our own fresh token may already be evicted only by our
				// own later mints, never here: per-caller cap 16 ≥ 1.
				if err := s.Check(tok, caller); err != nil {
					t.Errorf("fresh token: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if s.Len() > 256 {
		t.Errorf("Len = %d > 256", s.Len())
	}
}

func FuzzCheck(f *testing.F) {
	s := New(Config{MaxTokens: 16, MaxPerCaller: 4}, nil)
	good, err := s.Mint("a", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{"", "x", good, good + "=", strings.Repeat("A", 43), strings.Repeat("\xff", 43), good[:42] + "!"} {
		f.Add(seed, "a")
	}
	f.Fuzz(func(t *testing.T, tok, caller string) {
		err := s.Check(tok, caller)
		switch {
		case err == nil:
			if tok != good || caller != "a" {
				t.Fatalf("Check(%q, %q) accepted a token never minted for that caller", tok, caller)
			}
		case errors.Is(err, ErrMissing), errors.Is(err, ErrInvalid), errors.Is(err, ErrForeign), errors.Is(err, ErrExpired):
		default:
			t.Fatalf("Check(%q, %q) = %v: not a sentinel", tok, caller, err)
		}
		if tok == "" && !errors.Is(err, ErrMissing) {
			t.Fatalf("empty token: %v", err)
		}
	})
}
