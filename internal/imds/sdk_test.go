package imds

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"

	"github.com/per-docker-roles/per-docker-roles/internal/creds"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

// liveHarness is a harness whose clock is the real one and whose broker
// hands out credentials valid for an hour from now, as the SDKs check
// expiry against the wall clock.
func liveHarness(t *testing.T, cfg Config) (*harness, *creds.Credentials) {
	t.Helper()
	h := newHarness(t, harnessOpt{cfg: cfg})
	now := time.Now().UTC().Truncate(time.Second)
	c := &creds.Credentials{
		AccessKeyID:     "ASIALIVEAPPROLE00001",
		SecretAccessKey: "live/secret+key=",
		SessionToken:    "IQoJb3JpZ2luX2VjEXAMPLE" + strings.Repeat("x", 800),
		Expiration:      now.Add(time.Hour),
		LastUpdated:     now,
		AccountID:       account,
		RoleARN:         "arn:aws:iam::123456789012:role/app-role",
	}
	h.broker.mu.Lock()
	h.broker.byRole[c.RoleARN] = brokerResult{c: c, hit: true}
	h.broker.mu.Unlock()
	h.clock.mu.Lock()
	h.clock.t = time.Now()
	h.clock.mu.Unlock()
	return h, c
}

// loopbackClient dials only the harness, from who's address: whatever the
// SDK resolves, nothing can leave the machine.
func (h *harness) loopbackClient(who string) *http.Client {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(callers[who].ip)}, Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != h.addr {
				return nil, fmt.Errorf("test dialer: refusing %s (only %s)", addr, h.addr)
			}
			return d.DialContext(ctx, network, addr)
		}},
	}
}

// TestGoSDK: the real aws-sdk-go-v2 IMDS client and ec2rolecreds provider
// (what config.LoadDefaultConfig falls back to) get the credentials over
// IMDSv2, IMDSv1 fallback disabled.
func TestGoSDK(t *testing.T) {
	t.Parallel()
	h, want := liveHarness(t, Config{})
	client := imds.New(imds.Options{
		Endpoint:       "http://" + h.addr,
		HTTPClient:     h.loopbackClient("app"),
		EnableFallback: aws.FalseTernary, // a 401 must not be papered over by IMDSv1
	})
	p := ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = client })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := p.Retrieve(ctx)
	if err != nil {
		t.Fatalf("ec2rolecreds Retrieve: %v", err)
	}
	if got.AccessKeyID != want.AccessKeyID || got.SecretAccessKey != want.SecretAccessKey || got.SessionToken != want.SessionToken {
		t.Fatalf("SDK got %+v", got)
	}
	if !got.CanExpire || !got.Expires.Equal(want.Expiration) {
		t.Fatalf("SDK expiry %v (can expire %v), want %v", got.Expires, got.CanExpire, want.Expiration)
	}
	if got.AccountID != "" && got.AccountID != account {
		t.Fatalf("SDK account id %q", got.AccountID)
	}

	// The raw client too: iam/info parses, and the -extended document
	// carries the account.
	info, err := client.GetIAMInfo(ctx, &imds.GetIAMInfoInput{})
	if err != nil {
		t.Fatalf("GetIAMInfo: %v", err)
	}
	if info.InstanceProfileArn != "arn:aws:iam::123456789012:instance-profile/app-role" || !strings.HasPrefix(info.InstanceProfileID, "AIPA") || info.Code != "Success" {
		t.Fatalf("GetIAMInfo = %+v", info.IAMInfo)
	}
	out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: "iam/security-credentials-extended/app-role"})
	if err != nil {
		t.Fatalf("extended: %v", err)
	}
	defer out.Content.Close()
	var doc map[string]string
	if err := json.NewDecoder(out.Content).Decode(&doc); err != nil || doc["AccountId"] != account {
		t.Fatalf("extended document %v, %v", doc, err)
	}
	// Requests the SDK made: one token reused across all of them.
	if v := counterValue(t, h.reg, "pdr_imds_requests_total", map[string]string{"route": "token", "status": "200"}); v != 1 {
		t.Errorf("SDK minted %v tokens, want 1 reused", v)
	}
}

// TestGoSDKNoRole: a container with no role label gets an error from the
// provider, never someone else's credentials.
func TestGoSDKNoRole(t *testing.T) {
	t.Parallel()
	h, _ := liveHarness(t, Config{})
	client := imds.New(imds.Options{Endpoint: "http://" + h.addr, HTTPClient: h.loopbackClient("nolabel"), EnableFallback: aws.FalseTernary})
	p := ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = client })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if got, err := p.Retrieve(ctx); err == nil {
		t.Fatalf("no-label container got credentials %+v", got)
	}
}

const botocoreScript = `
import json, sys
import botocore.session
s = botocore.session.get_session()
c = s.get_credentials()
if c is None:
    print(json.dumps({"error": "no credentials"}))
    sys.exit(0)
f = c.get_frozen_credentials()
print(json.dumps({"method": c.method, "access_key": f.access_key, "secret_key": f.secret_key, "token": f.token}))
`

// TestBotocore runs botocore's full default credential chain with only
// AWS_EC2_METADATA_SERVICE_ENDPOINT pointing at the proxy.
func TestBotocore(t *testing.T) {
	t.Parallel()
	// The machine's pyenv Python, else Debian's (python3-boto3, which
	// .ci/run installs).
	var py string
	var err error
	for _, cand := range []string{"/root/.pyenv/shims/python3", "/usr/bin/python3"} {
		if err = exec.Command(cand, "-c", "import botocore").Run(); err == nil {
			py = cand
			break
		}
	}
	if py == "" {
		if testenv.Required() {
			t.Fatalf("botocore required (PDR_REQUIRE_PRIVILEGED set) but no python3 can import it: %v", err)
		}
		t.Skipf("botocore unavailable: %v", err)
	}
	// botocore's endpoint is not behind our dialer: belt and braces.
	testenv.Blackhole(t)
	h, want := liveHarness(t, Config{})
	// botocore cannot choose its source address, so identify it as app
	// from 127.0.0.1.
	h.ident.mu.Lock()
	h.ident.byIP[mustAddr("127.0.0.1")] = callers["app"]
	h.ident.mu.Unlock()

	home := t.TempDir()
	env := []string{
		"HOME=" + home,
		"PATH=" + os.Getenv("PATH"),
		"AWS_CONFIG_FILE=" + filepath.Join(home, "none"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "none"),
		"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://" + h.addr + "/",
		"AWS_METADATA_SERVICE_NUM_ATTEMPTS=1",
		"AWS_METADATA_SERVICE_TIMEOUT=5",
	}
	for _, k := range []string{"PYENV_ROOT", "PYENV_VERSION"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-c", botocoreScript)
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("botocore: %v\n%s", err, out)
	}
	var got map[string]string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("botocore output %q: %v", out, err)
	}
	if got["method"] != "iam-role" || got["access_key"] != want.AccessKeyID || got["secret_key"] != want.SecretAccessKey || got["token"] != want.SessionToken {
		t.Fatalf("botocore got %v", got)
	}
	if v := counterValue(t, h.reg, "pdr_imds_requests_total", map[string]string{"route": "token", "status": "200"}); v < 1 {
		t.Errorf("botocore did not use IMDSv2 (no token minted)")
	}
}

const jsScript = `
const { fromInstanceMetadata } = require(process.env.PDR_IMDS_MODULE);
fromInstanceMetadata({ timeout: 5000, maxRetries: 0 })()
  .then(c => console.log(JSON.stringify({ access_key: c.accessKeyId, secret_key: c.secretAccessKey, token: c.sessionToken, expiration: c.expiration.toISOString() })))
  .catch(e => { console.log(JSON.stringify({ error: String(e) })); });
`

// TestJSSDK runs the JS SDK v3 IMDS provider (@smithy/credential-provider-imds)
// when PDR_NODE_MODULES names a node_modules directory holding it (the
// registry package is not vendored, so CI skips this; see the report).
func TestJSSDK(t *testing.T) {
	t.Parallel()
	dir := os.Getenv("PDR_NODE_MODULES")
	node, err := exec.LookPath("node")
	if dir == "" || err != nil {
		t.Skip("set PDR_NODE_MODULES to a node_modules with @smithy/credential-provider-imds (and have node) to run")
	}
	testenv.Blackhole(t)
	h, want := liveHarness(t, Config{})
	h.ident.mu.Lock()
	h.ident.byIP[mustAddr("127.0.0.1")] = callers["app"]
	h.ident.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "-e", jsScript)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"PDR_IMDS_MODULE=" + filepath.Join(dir, "@smithy", "credential-provider-imds"),
		"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://" + h.addr,
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var got map[string]string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node output %q: %v", out, err)
	}
	if got["access_key"] != want.AccessKeyID || got["secret_key"] != want.SecretAccessKey || got["token"] != want.SessionToken ||
		got["expiration"] != want.Expiration.UTC().Format("2006-01-02T15:04:05.000Z") {
		t.Fatalf("JS SDK got %v", got)
	}
	if v := counterValue(t, h.reg, "pdr_imds_requests_total", map[string]string{"route": "token", "status": "200"}); v < 1 {
		t.Errorf("JS SDK did not use IMDSv2 (no token minted)")
	}
}
