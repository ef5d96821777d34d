package clientimg

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"golang.org/x/sync/errgroup"

	"github.com/per-docker-roles/per-docker-roles/internal/fakeaws"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv/priv"
)

const (
	testRegion = "us-east-1"
	testARN    = "arn:aws:sts::" + testAccount + ":assumed-role/" + testRole + "/clientimg-test"
	// The token TTLs the two SDKs ask for (aws-sdk-go-v2 feature/ec2/imds
	// defaultTokenTTL; botocore IMDSFetcher._TOKEN_TTL), asserted so an SDK
	// upgrade that changes them is noticed.
	goTokenTTL = 300
	pyTokenTTL = 21600
)

// line is one JSON line printed by either client.
type line struct {
	SDK        string `json:"sdk"`
	Attempt    int    `json:"attempt"`
	ARN        string `json:"arn"`
	KeyPrefix  string `json:"access_key_id_prefix"`
	Expiration string `json:"expiration"`
	Error      string `json:"error"`
}

func dockerClient(t *testing.T) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatalf("docker client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		priv.Unsupported(t, "dockerd", err)
	}
	return cli
}

func uniqueName(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "pdr-clientimg-" + hex.EncodeToString(b)
}

// testNetwork creates a bridge network owned by the test and returns its
// name and gateway, the one non-loopback address the fakes may listen on:
// containers cannot reach the host's loopback.
func testNetwork(t *testing.T, cli *client.Client) (name, gateway string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	name = uniqueName(t)
	resp, err := cli.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge", Labels: map[string]string{Label: "clientimg-test"}})
	if err != nil {
		t.Fatalf("create network %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := cli.NetworkRemove(ctx, resp.ID); err != nil {
			t.Errorf("remove network %s: %v", name, err)
		}
	})
	ins, err := cli.NetworkInspect(ctx, resp.ID, network.InspectOptions{})
	if err != nil {
		t.Fatalf("inspect network %s: %v", name, err)
	}
	for _, c := range ins.IPAM.Config {
		if ip := net.ParseIP(c.Gateway); ip != nil && ip.To4() != nil {
			return name, c.Gateway
		}
	}
	t.Fatalf("network %s has no IPv4 gateway: %+v", name, ins.IPAM.Config)
	return "", ""
}

// serveOn serves h on ip (the test network's gateway) at a free port.
func serveOn(t *testing.T, ip string, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", ip, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// runClient runs image with args on netName and returns stdout, stderr
// and the exit code. The container is removed afterwards.
func runClient(t *testing.T, cli *client.Client, image, netName string, env, args []string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := uniqueName(t)
	cr, err := cli.ContainerCreate(ctx, &container.Config{
		Image: image, Cmd: args, Env: env, Labels: map[string]string{Label: "clientimg-test"},
	}, &container.HostConfig{NetworkMode: container.NetworkMode(netName)}, nil, nil, name)
	if err != nil {
		t.Fatalf("create container %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := cli.ContainerRemove(ctx, cr.ID, container.RemoveOptions{Force: true}); err != nil {
			t.Errorf("remove container %s: %v", name, err)
		}
	})
	waitC, errC := cli.ContainerWait(ctx, cr.ID, container.WaitConditionNextExit)
	if err := cli.ContainerStart(ctx, cr.ID, container.StartOptions{}); err != nil {
		t.Fatalf("start container %s: %v", name, err)
	}
	var code int
	select {
	case w := <-waitC:
		if w.Error != nil {
			t.Fatalf("wait container %s: %s", name, w.Error.Message)
		}
		code = int(w.StatusCode)
	case err := <-errC:
		t.Fatalf("wait container %s: %v", name, err)
	}
	logs, err := cli.ContainerLogs(ctx, cr.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatalf("logs of container %s: %v", name, err)
	}
	defer logs.Close()
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, logs); err != nil {
		t.Fatalf("logs of container %s: %v", name, err)
	}
	return stdout.String(), stderr.String(), code
}

func parseLines(t *testing.T, stdout string) []line {
	t.Helper()
	var out []line
	sc := bufio.NewScanner(strings.NewReader(stdout))
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("client printed a non-JSON line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// buildImages builds both images concurrently and logs the build times.
func buildImages(t *testing.T, cli *client.Client) (goTag, pyTag string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var g errgroup.Group
	var goIm, pyIm Image
	g.Go(func() (err error) { goIm, err = GoImage(ctx, cli); return err })
	g.Go(func() (err error) { pyIm, err = PythonImage(ctx, cli); return err })
	if err := g.Wait(); err != nil {
		if errors.Is(err, ErrNoPython) {
			priv.Unsupported(t, "Debian python3-boto3", err)
		}
		t.Fatalf("build images: %v", err)
	}
	t.Logf("go image: %s", goIm)
	t.Logf("python image: %s", pyIm)
	return goIm.Tag, pyIm.Tag
}

// TestClientsGetCredentialsThroughIMDSv2 runs both SDK clients in
// containers against a strict IMDSv2 fake and the fakeaws STS (which
// verifies SigV4 with the keys the IMDS fake issued), both listening on the
// gateway of a network the test created.
func TestClientsGetCredentialsThroughIMDSv2(t *testing.T) {
	priv.RequirePrivileged(t)
	priv.Blackhole(t)
	cli := dockerClient(t)
	goTag, pyTag := buildImages(t, cli)
	netName, gw := testNetwork(t, cli)
	store := fakeaws.NewStore(nil)
	sts := fakeaws.NewSTS(store, fakeaws.STSConfig{Region: testRegion})
	stsURL := serveOn(t, gw, sts)

	type check func(t *testing.T, lines []line, c imdsCounts)
	cases := []struct {
		name  string
		py    bool
		life  time.Duration // lifetime of each key the IMDS fake issues
		args  []string
		exit  int
		check check
	}{
		{
			name: "go/whoami", life: time.Hour, args: []string{"whoami"},
			check: func(t *testing.T, l []line, c imdsCounts) {
				wantCalls(t, l, c, 1, 1, goTokenTTL)
			},
		},
		{
			name: "python/whoami", py: true, life: time.Hour, args: []string{"whoami"},
			check: func(t *testing.T, l []line, c imdsCounts) {
				wantCalls(t, l, c, 1, 1, pyTokenTTL)
			},
		},
		{
			// One aws.Config: the SDK's cache serves attempts 2 and 3.
			name: "go/loop-cached", life: time.Hour, args: []string{"loop", "3", "200ms"},
			check: func(t *testing.T, l []line, c imdsCounts) {
				wantCalls(t, l, c, 3, 1, goTokenTTL)
				wantSameKey(t, l, true)
			},
		},
		{
			name: "python/loop-cached", py: true, life: time.Hour, args: []string{"loop", "3", "0.2"},
			check: func(t *testing.T, l []line, c imdsCounts) {
				wantCalls(t, l, c, 3, 1, pyTokenTTL)
				wantSameKey(t, l, true)
			},
		},
		{
			// Keys live 2..3 s (the store truncates expiry to whole seconds)
			// and attempts are 3.5 s apart: every attempt
			// finds the cached key expired and goes back to IMDS, reusing
			// its 300 s token.
			name: "go/loop-refresh", life: 3 * time.Second, args: []string{"loop", "3", "3500ms"},
			check: func(t *testing.T, l []line, c imdsCounts) {
				wantCalls(t, l, c, 3, 3, goTokenTTL)
				wantSameKey(t, l, false)
				if len(c.TTLs) != 1 {
					t.Errorf("token PUTs = %d, want 1 (the Go SDK reuses its token)", len(c.TTLs))
				}
			},
		},
		{
			// botocore 1.29 (Debian 12) "extends" a key that expires within
			// 15 min + 2..10 min of jitter to now+17..25 min and refreshes
			// only when 15 min of that are left, i.e. 2..10 min after the
			// fetch. A key with less than 10 min left is therefore used past
			// its expiry and STS answers ExpiredToken, as seen here. The
			// proxy's rule of handing out keys with at least 15 minutes left
			// (DESIGN §7) is what keeps botocore safe.
			name: "python/short-expiry-extended", py: true, life: 3 * time.Second, args: []string{"loop", "2", "5"}, exit: 1,
			check: func(t *testing.T, l []line, c imdsCounts) {
				if len(l) != 2 {
					t.Fatalf("got %d lines, want 2: %+v", len(l), l)
				}
				if l[0].Error != "" || l[0].ARN != testARN {
					t.Errorf("attempt 1 = %+v, want success as %s", l[0], testARN)
				}
				if !strings.Contains(l[1].Error, "ExpiredToken") {
					t.Errorf("attempt 2 error = %q, want ExpiredToken (botocore kept the expired key)", l[1].Error)
				}
				if c.CredGETs != 1 {
					t.Errorf("credential GETs = %d, want 1 (botocore extended instead of refreshing)", c.CredGETs)
				}
				exp, err := time.Parse(time.RFC3339, l[0].Expiration)
				if err != nil {
					t.Fatalf("expiration %q: %v", l[0].Expiration, err)
				}
				ext := exp.Sub(c.LastExpires)
				t.Logf("botocore extended a 3 s key by %s", ext.Round(time.Second))
				if ext < 16*time.Minute || ext > 26*time.Minute {
					t.Errorf("botocore expiry %s is %s past the served %s, want 17..25 min", exp, ext, c.LastExpires)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			imds := newFakeIMDS(store, tc.life)
			imdsURL := serveOn(t, gw, imds)
			image, env := goTag, []string{"AWS_REGION=" + testRegion}
			if tc.py {
				image, env = pyTag, []string{"AWS_DEFAULT_REGION=" + testRegion}
			}
			env = append(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT="+imdsURL+"/", "STS_ENDPOINT="+stsURL)
			start := time.Now()
			stdout, stderr, code := runClient(t, cli, image, netName, env, tc.args)
			c := imds.counts()
			t.Logf("%s in %s: exit %d, token TTLs %v, list GETs %d, credential GETs %d\nstdout: %s\nstderr: %s",
				tc.args, time.Since(start).Round(time.Millisecond), code, c.TTLs, c.ListGETs, c.CredGETs, stdout, tail(stderr, 2000))
			if code != tc.exit {
				t.Errorf("exit code = %d, want %d", code, tc.exit)
			}
			if c.Tokenless != 0 || c.XFF != 0 {
				t.Errorf("SDK sent %d tokenless and %d X-Forwarded-For requests, want none (IMDSv2 only)", c.Tokenless, c.XFF)
			}
			lines := parseLines(t, stdout)
			sdk := "go"
			if tc.py {
				sdk = "python"
			}
			for i, l := range lines {
				if l.SDK != sdk || l.Attempt != i+1 {
					t.Errorf("line %d = %+v, want sdk %s attempt %d", i, l, sdk, i+1)
				}
			}
			assertNoSecrets(t, store, c.IssuedKeys, stdout+stderr, false)
			tc.check(t, lines, c)
		})
	}
}

// wantCalls checks n successful attempts as testARN, credGETs credential
// fetches, and that every token PUT asked for ttl.
func wantCalls(t *testing.T, l []line, c imdsCounts, n, credGETs, ttl int) {
	t.Helper()
	if len(l) != n {
		t.Fatalf("got %d lines, want %d: %+v", len(l), n, l)
	}
	for _, x := range l {
		if x.Error != "" || x.ARN != testARN {
			t.Errorf("attempt %d = %+v, want success as %s", x.Attempt, x, testARN)
		}
		if len(x.KeyPrefix) != 8 || !strings.HasPrefix(x.KeyPrefix, "ASIA") {
			t.Errorf("attempt %d access_key_id_prefix = %q, want 8 chars of an ASIA key", x.Attempt, x.KeyPrefix)
		}
		if _, err := time.Parse(time.RFC3339, x.Expiration); err != nil {
			t.Errorf("attempt %d expiration %q: %v", x.Attempt, x.Expiration, err)
		}
	}
	if c.CredGETs != credGETs {
		t.Errorf("credential GETs = %d, want %d", c.CredGETs, credGETs)
	}
	if c.ListGETs < 1 {
		t.Errorf("role list GETs = %d, want at least 1", c.ListGETs)
	}
	if len(c.TTLs) < 1 {
		t.Errorf("no token PUT: the SDK did not use IMDSv2")
	}
	for _, got := range c.TTLs {
		if got != ttl {
			t.Errorf("token PUT asked for TTL %d, want %d", got, ttl)
		}
	}
	last := l[len(l)-1].Expiration
	if want := c.LastExpires.UTC().Format(time.RFC3339); last != want {
		t.Errorf("last expiration printed %s, want the served %s", last, want)
	}
}

func wantSameKey(t *testing.T, l []line, same bool) {
	t.Helper()
	seen := map[string]bool{}
	for _, x := range l {
		seen[x.KeyPrefix] = true
	}
	if same && len(seen) != 1 {
		t.Errorf("attempts used %d keys, want 1 (cached): %v", len(seen), seen)
	}
	if !same && len(seen) != len(l) {
		t.Errorf("attempts used %d distinct keys, want %d (refreshed each time): %v", len(seen), len(l), seen)
	}
}

// assertNoSecrets fails if any secret or session token of the issued keys
// appears in the output (or a full access key id, unless keyIDs).
func assertNoSecrets(t *testing.T, store *fakeaws.Store, keys []string, out string, keyIDs bool) {
	t.Helper()
	for _, k := range keys {
		is, ok := store.Lookup(k)
		if !ok {
			t.Fatalf("issued key %s not in store", k)
		}
		if strings.Contains(out, is.SecretAccessKey) || strings.Contains(out, is.SessionToken) {
			t.Errorf("client output contains the secret or session token of %s", k[:8])
		}
		if !keyIDs && strings.Contains(out, k) {
			t.Errorf("client output contains the full access key id %s...", k[:8])
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// TestGoClientIMDSRaw checks the hand-rolled protocol modes the e2e
// scenarios use, against the strict IMDS fake: status codes, exit codes,
// and that credential bodies are printed with secrets redacted.
func TestGoClientIMDSRaw(t *testing.T) {
	priv.RequirePrivileged(t)
	priv.Blackhole(t)
	cli := dockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	im, err := GoImage(ctx, cli)
	if err != nil {
		t.Fatalf("build go image: %v", err)
	}
	netName, gw := testNetwork(t, cli)
	store := fakeaws.NewStore(nil)

	cases := []struct {
		name      string
		args      []string
		exit      int
		status    int    // 0: the output is a bare token, not JSON
		body      string // substring the printed body must contain
		wantTTLs  []int
		tokenless int
		xff       int
		credGETs  int
	}{
		{name: "token", args: []string{"imds-raw", "token", "60"}, wantTTLs: []int{60}},
		{name: "token-bad-ttl", args: []string{"imds-raw", "token", "0"}, exit: 1, status: 400, body: "bad ttl"},
		{name: "get-list", args: []string{"imds-raw", "get", credsPrefix}, status: 200, body: testRole, wantTTLs: []int{60}},
		{
			name: "get-creds", args: []string{"imds-raw", "get", credsPrefix + testRole}, status: 200,
			body: `"SecretAccessKey":"<redacted>"`, wantTTLs: []int{60}, credGETs: 1,
		},
		{name: "get-foreign-token", args: []string{"imds-raw", "get", credsPrefix, "not-a-token"}, exit: 1, status: 401, tokenless: 1},
		{name: "v1", args: []string{"imds-raw", "v1", credsPrefix + testRole}, exit: 1, status: 401, tokenless: 1},
		{name: "xff-get", args: []string{"imds-raw", "xff", credsPrefix}, exit: 1, status: 403, wantTTLs: []int{60}, xff: 1},
		{name: "xff-token", args: []string{"imds-raw", "xff", "/latest/api/token"}, exit: 1, status: 403, xff: 1},
		{name: "bad-usage", args: []string{"imds-raw", "nope", "x"}, exit: 2, status: -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			imds := newFakeIMDS(store, time.Hour)
			env := []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + serveOn(t, gw, imds)}
			stdout, stderr, code := runClient(t, cli, im.Tag, netName, env, tc.args)
			c := imds.counts()
			t.Logf("%v: exit %d\nstdout: %s\nstderr: %s", tc.args, code, stdout, stderr)
			if code != tc.exit {
				t.Errorf("exit code = %d, want %d", code, tc.exit)
			}
			switch tc.status {
			case -1: // usage error: nothing on stdout
				if stdout != "" {
					t.Errorf("stdout = %q, want empty", stdout)
				}
			case 0:
				tok := strings.TrimSpace(stdout)
				imds.mu.Lock()
				_, ok := imds.tokens[tok]
				imds.mu.Unlock()
				if !ok {
					t.Errorf("printed token %q was not minted by the fake", tok)
				}
			default:
				var r struct {
					Status int    `json:"status"`
					Body   string `json:"body"`
				}
				if err := json.Unmarshal([]byte(stdout), &r); err != nil {
					t.Fatalf("output %q: %v", stdout, err)
				}
				if r.Status != tc.status || !strings.Contains(r.Body, tc.body) {
					t.Errorf("got status %d body %q, want %d containing %q", r.Status, r.Body, tc.status, tc.body)
				}
			}
			if !equalInts(c.TTLs, tc.wantTTLs) || c.Tokenless != tc.tokenless || c.XFF != tc.xff || c.CredGETs != tc.credGETs {
				t.Errorf("fake saw TTLs %v tokenless %d xff %d credential GETs %d, want %v %d %d %d",
					c.TTLs, c.Tokenless, c.XFF, c.CredGETs, tc.wantTTLs, tc.tokenless, tc.xff, tc.credGETs)
			}
			// Raw bodies keep the access key id (not a secret; scenarios
			// compare keys between containers).
			assertNoSecrets(t, store, c.IssuedKeys, stdout+stderr, true)
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
