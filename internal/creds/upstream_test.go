package creds

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestUpstreamInvalidCredentialsAreErrUpstream(t *testing.T) {
	t.Parallel()
	modes := []string{upEmpty, upFailCode, upExpired, upGarbage, upStatus, upNoRole}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, nil)
			e.up.setMode(mode)
			if err := e.b.UpstreamReady(context.Background()); !errors.Is(err, ErrUpstream) {
				t.Errorf("UpstreamReady = %v, want ErrUpstream", err)
			}
			if c, err := e.b.Base(context.Background()); !errors.Is(err, ErrUpstream) || c != nil {
				t.Errorf("Base = %v, %v; want ErrUpstream", c, err)
			}
			c, _, err := e.b.Get(context.Background(), req("r"))
			if !errors.Is(err, ErrUpstream) || errors.Is(err, ErrSTS) || c != nil {
				t.Errorf("Get = %v, %v; want ErrUpstream only", c, err)
			}
			if got := e.sts.Calls("AssumeRole"); got != 0 {
				t.Errorf("AssumeRole called %d times with invalid base credentials", got)
			}
			if got := metric(t, e.reg, "pdr_upstream_errors_total"); got < 1 {
				t.Errorf("pdr_upstream_errors_total = %v", got)
			}
			// Recovery: once upstream is sane again, everything works.
			e.up.setMode(upOK)
			if _, _, err := e.b.Get(context.Background(), req("r")); err != nil {
				t.Errorf("after recovery: %v", err)
			}
		})
	}
}

func TestUpstreamTokenReused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.up.mu.Lock()
	e.up.life = 15 * time.Minute
	e.up.mu.Unlock()
	const n = 20
	for range n {
		c, err := e.b.Base(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		// Into the base refresh window: the next call fetches again.
		e.clk.Advance(c.Expiration.Sub(e.clk.Now()) - 4*time.Minute)
	}
	if got := e.up.credGets.Load(); got < n {
		t.Fatalf("credential GETs = %d, want >= %d", got, n)
	}
	// 20 fetches over ~3.7h of fake time, under the 6h TTL: one token.
	if got := e.up.puts.Load(); got != 1 {
		t.Errorf("token PUTs = %d for %d fetches, want 1", got, e.up.credGets.Load())
	}

	// Past the token's 6h TTL a new one is minted before use, without a 401.
	unauth := e.up.unauth.Load()
	e.clk.Advance(7 * time.Hour)
	if err := e.b.UpstreamReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e.up.puts.Load(); got != 2 {
		t.Errorf("token PUTs after TTL = %d, want 2", got)
	}
	if e.up.unauth.Load() != unauth {
		t.Error("expired token was used before re-minting")
	}

	// The helper evicted our token: one 401, one new PUT, success.
	e.up.revokeTokens()
	e.clk.Advance(56 * time.Minute)
	if err := e.b.UpstreamReady(context.Background()); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	if got := e.up.puts.Load(); got != 3 {
		t.Errorf("token PUTs after 401 = %d, want 3", got)
	}
	if got := e.up.unauth.Load() - unauth; got != 1 {
		t.Errorf("401s = %d, want 1", got)
	}
}

func TestUpstreamStaleBaseOnFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	c1, err := e.b.Base(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	e.up.setMode(upEmpty)
	e.clk.Advance(c1.Expiration.Sub(e.clk.Now()) - 4*time.Minute) // inside base refresh window
	c, err := e.b.Base(context.Background())
	if err != nil || c.AccessKeyID != c1.AccessKeyID {
		t.Fatalf("with upstream failing, 4m left: %v (same key %v)", err, c != nil && c.AccessKeyID == c1.AccessKeyID)
	}
	e.clk.Advance(3*time.Minute + 30*time.Second) // 30s left
	if c, err := e.b.Base(context.Background()); !errors.Is(err, ErrUpstream) || c != nil {
		t.Fatalf("30s left: %v, %v; want ErrUpstream", c, err)
	}
}

func TestParseUpstreamCredential(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		doc  string
		ok   bool
	}{
		{"valid", `{"Code":"Success","AccessKeyId":"ASIA","SecretAccessKey":"s","Token":"t","Expiration":"2026-01-02T04:04:05Z","LastUpdated":"2026-01-02T03:04:05Z"}`, true},
		{"helper failure", `{"Code":"Success","AccessKeyId":"","SecretAccessKey":"","Token":"","Expiration":"0001-01-01T00:00:00Z"}`, false},
		{"zero expiration with keys", `{"Code":"Success","AccessKeyId":"A","SecretAccessKey":"s","Token":"t","Expiration":"0001-01-01T00:00:00Z"}`, false},
		{"no token", `{"Code":"Success","AccessKeyId":"A","SecretAccessKey":"s","Expiration":"2026-01-02T04:04:05Z"}`, false},
		{"not success", `{"Code":"Failed","AccessKeyId":"A","SecretAccessKey":"s","Token":"t","Expiration":"2026-01-02T04:04:05Z"}`, false},
		{"expired", `{"Code":"Success","AccessKeyId":"A","SecretAccessKey":"s","Token":"t","Expiration":"2026-01-02T03:04:05Z"}`, false},
		{"bad time", `{"Code":"Success","AccessKeyId":"A","SecretAccessKey":"s","Token":"t","Expiration":"soon"}`, false},
		{"not json", `nope`, false},
	}
	for _, tt := range tests {
		c, err := parseUpstreamCredential([]byte(tt.doc), now)
		if tt.ok != (err == nil) {
			t.Errorf("%s: err = %v", tt.name, err)
		}
		if err != nil && !errors.Is(err, ErrUpstream) {
			t.Errorf("%s: %v does not wrap ErrUpstream", tt.name, err)
		}
		if err == nil && (c.Expiration != now.Add(time.Hour) || c.SessionToken != "t") {
			t.Errorf("%s: parsed %+v", tt.name, c)
		}
	}
}

func FuzzParseUpstreamCredential(f *testing.F) {
	f.Add([]byte(`{"Code":"Success","AccessKeyId":"ASIA","SecretAccessKey":"s","Token":"t","Expiration":"2026-01-02T04:04:05Z"}`))
	f.Add([]byte(`{"Code":"Success","Expiration":"0001-01-01T00:00:00Z"}`))
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, doc []byte) {
		c, err := parseUpstreamCredential(doc, now)
		if err == nil && (c.AccessKeyID == "" || c.SecretAccessKey == "" || !c.Expiration.After(now)) {
			t.Fatalf("accepted invalid credential %+v", c)
		}
	})
}
