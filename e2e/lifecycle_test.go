//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv/stack"
)

// canary puts 169.254.169.254 on a dummy interface of this machine and
// counts the connections that reach it: any connection there came through
// unredirected. (Locally delivered, it cannot leave the machine; the
// blackhole route stays as a second net.)
type canary struct{ hits atomic.Int64 }

func startCanary(t *testing.T) *canary {
	t.Helper()
	const dev = "pdrcanary0"
	_ = exec.Command("ip", "link", "del", dev).Run()
	// Kernels without CONFIG_DUMMY: an empty bridge holds an address as well.
	if exec.Command("ip", "link", "add", dev, "type", "dummy").Run() != nil {
		if out, err := exec.Command("ip", "link", "add", dev, "type", "bridge").CombinedOutput(); err != nil {
			t.Fatalf("create %s: %v: %s", dev, err, out)
		}
	}
	for _, args := range [][]string{
		{"addr", "add", "169.254.169.254/32", "dev", dev},
		{"link", "set", dev, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", dev).Run() })
	ln, err := net.Listen("tcp", "169.254.169.254:80")
	if err != nil {
		t.Fatalf("canary listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	c := &canary{}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.hits.Add(1)
			conn.Close()
		}
	}()
	return c
}

func refused(t *testing.T, s *stack.Stack) uint64 {
	t.Helper()
	st, err := redirect.ReadStatus(s.PinDir)
	if err != nil {
		t.Fatalf("read redirect status: %v", err)
	}
	return st.Counters.Refused
}

// whoamiUntil runs the Go client until it succeeds or timeout passes.
func whoamiUntil(t *testing.T, s *stack.Stack, c stack.Client, timeout time.Duration) stack.Result {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := run(t, s, c)
		if r.Exit == 0 || time.Now().After(deadline) {
			return r
		}
		time.Sleep(time.Second)
	}
}

// Scenario 5: dockerd restarted → service resumes; per-docker-roles
// stopped (gracefully or killed) → metadata connections are refused, none
// reaches 169.254.169.254 unredirected, and service resumes on restart.
func TestRestarts(t *testing.T) {
	e := setup(t)
	d := testenv.StartPrivateDockerd(t)
	pcli := d.Client(t)
	testenv.CopyImage(t, e.cli, pcli, e.goImage)
	s := e.start(t, stack.Config{Docker: pcli, DockerHost: d.Host})
	can := startCanary(t)
	client := stack.Client{Image: e.goImage, Name: "pdr-e2e-restarts", Role: "app-reader"}
	want := assumedARN("app-reader", client.Name)

	if r := run(t, s, client); r.Exit != 0 || str(r.Lines[0], "arn") != want {
		t.Fatalf("before restarts: %s", r.Stdout)
	}

	t.Run("dockerd restart", func(t *testing.T) {
		d.Restart()
		start := time.Now()
		r := whoamiUntil(t, s, client, 60*time.Second)
		if r.Exit != 0 || str(r.Lines[0], "arn") != want {
			t.Fatalf("after dockerd restart: %s", r.Stdout)
		}
		t.Logf("service resumed %v after dockerd came back", time.Since(start).Round(time.Millisecond))
	})

	for _, kill := range []bool{false, true} {
		name := map[bool]string{false: "daemon SIGTERM", true: "daemon SIGKILL"}[kill]
		t.Run(name, func(t *testing.T) {
			before := refused(t, s)
			s.StopDaemon(kill)
			r := run(t, s, client)
			if r.Exit == 0 || str(r.Lines[0], "arn") != "" {
				t.Fatalf("credentials served while the daemon is down: %s", r.Stdout)
			}
			if !kill {
				// Graceful stop clears the target: the kernel refuses
				// (EPERM; the SDK retries it into a timeout, so the
				// counter is the evidence).
				if after := refused(t, s); after <= before {
					t.Errorf("refused counter %d → %d: connection was not refused by the redirect", before, after)
				}
			}
			if err := s.StartDaemon(context.Background()); err != nil {
				t.Fatal(err)
			}
			r = whoamiUntil(t, s, client, 30*time.Second)
			if r.Exit != 0 || str(r.Lines[0], "arn") != want {
				t.Fatalf("after daemon restart: %s", r.Stdout)
			}
		})
	}
	t.Run("restart while containers keep asking", func(t *testing.T) {
		stop := make(chan struct{})
		type outcome struct {
			at time.Time
			ok bool
		}
		results := make(chan outcome, 100)
		go func() {
			defer close(results)
			for i := 0; i < 60; i++ { // bounded: at most 60 containers
				select {
				case <-stop:
					return
				default:
				}
				r, err := s.Run(context.Background(), stack.Client{Image: e.goImage, Name: fmt.Sprintf("pdr-e2e-asking-%d", i), Role: "app-reader"})
				ok := err == nil && r.Exit == 0 && len(r.Lines) > 0 && str(r.Lines[0], "arn") == assumedARN("app-reader", fmt.Sprintf("pdr-e2e-asking-%d", i))
				if err == nil && r.Exit == 0 && !ok {
					t.Errorf("wrong identity during restart: %s", r.Stdout)
				}
				results <- outcome{time.Now(), ok}
			}
		}()
		time.Sleep(3 * time.Second)
		refusedBefore := refused(t, s)
		s.StopDaemon(false)
		time.Sleep(3 * time.Second)
		refusedDown := refused(t, s) - refusedBefore
		if err := s.StartDaemon(context.Background()); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		time.Sleep(8 * time.Second)
		close(stop)
		var before, after, failed int
		for o := range results {
			switch {
			case !o.ok:
				failed++
			case o.at.Before(restarted):
				before++
			default:
				after++
			}
		}
		// SDK retries often carry a container across the 3 s gap, so the
		// kernel's refusals are counted rather than failed containers.
		t.Logf("restart under load: %d containers served before the restart, %d failed, %d served after; %d connections refused by the kernel while the daemon was down",
			before, failed, after, refusedDown)
		if refusedDown == 0 {
			t.Error("no metadata connection was refused while the daemon was down: were the containers asking?")
		}
		if after == 0 {
			t.Error("no container was served after the restart")
		}
	})
	if n := can.hits.Load(); n != 0 {
		t.Fatalf("%d connections reached 169.254.169.254 unredirected", n)
	}
}

// imdsDoc is what `goclient imds-raw get` prints.
type imdsDoc struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
}

type credDoc struct {
	AccessKeyID string    `json:"AccessKeyId"`
	Expiration  time.Time `json:"Expiration"`
}

// Scenarios 4 and 6 on one stack with short-lived credentials (role
// sessions 80 s, base sessions 2 min, so expiries happen within the test).
// Renewal is shown with the Go SDK only: botocore pushes the expiry of
// credentials with under ~15 minutes left forward by 15-25 minutes instead
// of refreshing them (seen with Debian's botocore 1.29), so with 80 s
// sessions it signs with expired keys; that is why the broker hands out
// credentials with at least 15 minutes left when sessions allow.
func TestExpiryAndUpstreamOutage(t *testing.T) {
	e := setup(t)
	const life = 80 * time.Second
	s := e.start(t, stack.Config{Upstream: testenv.UpstreamConfig{
		STSIssueLifetime: life,
		MaxDuration:      2 * time.Minute,
	}})

	t.Run("credentials renew across expiry", func(t *testing.T) {
		role := roleARN("app-renew")
		before := s.Up.STS.RoleCalls(role)
		start := time.Now()
		var wg sync.WaitGroup
		results := map[string]stack.Result{}
		var mu sync.Mutex
		for _, c := range []stack.Client{
			{Image: e.goImage, Name: "pdr-e2e-renew-go", Role: "app-renew", Cmd: []string{"loop", "14", "15s"}, Timeout: 5 * time.Minute},
		} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := s.Run(context.Background(), c)
				if err != nil {
					t.Errorf("run %s: %v", c.Name, err)
				}
				mu.Lock()
				results[c.Name] = r
				mu.Unlock()
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		calls := s.Up.STS.RoleCalls(role) - before
		for name, r := range results {
			keys := map[string]bool{}
			for _, l := range r.Lines {
				if str(l, "error") != "" || !strings.HasPrefix(str(l, "arn"), "arn:aws:sts::"+account+":assumed-role/app-renew/") {
					t.Errorf("%s attempt %v failed: %v", name, l["attempt"], l)
				}
				keys[str(l, "access_key_id_prefix")] = true
			}
			t.Logf("%s: %d attempts over %v, %d distinct keys", name, len(r.Lines), elapsed.Round(time.Second), len(keys))
			if len(r.Lines) != 14 {
				t.Errorf("%s printed %d attempts, want 14:\n%s%s", name, len(r.Lines), r.Stdout, r.Stderr)
			}
			if len(keys) < 3 {
				t.Errorf("%s saw %d distinct keys in %v with %v sessions, want at least 3 refresh cycles", name, len(keys), elapsed, life)
			}
		}
		// One session, refreshed about every half-life. Per request it
		// would be 14 calls or more.
		maxCalls := int(elapsed/(life/2)) + 2
		t.Logf("AssumeRole calls for %s: %d over %v (bound %d; 14 client requests)", role, calls, elapsed.Round(time.Second), maxCalls)
		if calls > maxCalls {
			t.Errorf("%d AssumeRole calls, more than one per refresh (bound %d)", calls, maxCalls)
		}
	})

	t.Run("upstream helper outage", func(t *testing.T) {
		c := stack.Client{Image: e.goImage, Name: "pdr-e2e-outage", Role: "app-outage",
			Cmd: []string{"imds-raw", "get", "/latest/meta-data/iam/security-credentials/app-outage"}}
		get := func() (imdsDoc, credDoc) {
			t.Helper()
			r := run(t, s, c)
			var doc imdsDoc
			if err := json.Unmarshal([]byte(strings.TrimSpace(r.Stdout)), &doc); err != nil {
				t.Fatalf("client output %q: %v", r.Stdout, err)
			}
			var cd credDoc
			if doc.Status == 200 {
				if err := json.Unmarshal([]byte(doc.Body), &cd); err != nil {
					t.Fatalf("credential body %q: %v", doc.Body, err)
				}
			}
			return doc, cd
		}
		if doc, _ := get(); doc.Status != 200 {
			t.Fatalf("before outage: %+v", doc)
		}
		if err := s.Up.Stop(); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		var lastExp time.Time
		served := 0
		for {
			doc, cd := get()
			now := time.Now()
			if doc.Status == 200 {
				if !cd.Expiration.After(now) {
					t.Fatalf("served an expired credential (expired %v) during the outage", cd.Expiration)
				}
				served++
				lastExp = cd.Expiration
			} else {
				if doc.Status != 503 {
					t.Fatalf("during the outage got %d %q, want 200 (cached) or 503", doc.Status, doc.Body)
				}
				if strings.TrimSpace(doc.Body) == "" {
					t.Errorf("503 without a reason")
				}
				// Served until its expiry: a 503 while a credential we
				// handed out still had more than minServe (1m) plus
				// slack left would mean the cache was dropped early.
				if left := lastExp.Sub(now); left > time.Minute+10*time.Second {
					t.Errorf("503 while the last credential had %v left", left)
				}
				t.Logf("outage: %d cached answers for %v, then 503 %q", served, now.Sub(stopped).Round(time.Second), strings.TrimSpace(doc.Body))
				break
			}
			if now.Sub(stopped) > 5*time.Minute {
				t.Fatal("still serving 5 minutes into the outage with 80 s sessions")
			}
			time.Sleep(3 * time.Second)
		}
		if served == 0 {
			t.Error("no cached credential was served after the helper stopped")
		}
		if err := s.Up.Start(); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		for {
			doc, _ := get()
			if doc.Status == 200 {
				t.Logf("recovered %v after the helper came back", time.Since(back).Round(time.Millisecond))
				break
			}
			if time.Since(back) > time.Minute {
				t.Fatalf("no recovery a minute after the helper came back: %+v", doc)
			}
			time.Sleep(2 * time.Second)
		}
	})
}
