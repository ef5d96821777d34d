package testenv_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/per-docker-roles/per-docker-roles/internal/fakeaws"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
	"go.uber.org/zap/zaptest"
)

// refreshableCred is the helper's IMDS credential document.
type refreshableCred struct {
	Code            string
	Type            string
	AccessKeyId     string
	SecretAccessKey string
	Token           string
	Expiration      time.Time
	LastUpdated     time.Time
}

// imdsClient speaks IMDSv2 by hand, so the test sees statuses and bodies
// exactly as the helper sends them.
type imdsClient struct {
	t    *testing.T
	base string
	tok  string
}

func newIMDSClient(t *testing.T, base string) *imdsClient {
	t.Helper()
	c := &imdsClient{t: t, base: base}
	req, _ := http.NewRequest(http.MethodPut, base+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "300")
	status, body, hdr := c.do(req)
	if status != 200 || body == "" || hdr.Get("X-aws-ec2-metadata-token-ttl-seconds") != "300" {
		t.Fatalf("token PUT: %d %q ttl %q", status, body, hdr.Get("X-aws-ec2-metadata-token-ttl-seconds"))
	}
	c.tok = body
	return c
}

func (c *imdsClient) get(path string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.base+path, nil)
	req.Header.Set("X-aws-ec2-metadata-token", c.tok)
	status, body, _ := c.do(req)
	return status, body
}

func (c *imdsClient) creds(role string) refreshableCred {
	c.t.Helper()
	status, body := c.get("/latest/meta-data/iam/security-credentials/" + role)
	if status != 200 {
		c.t.Fatalf("GET credentials: %d %s", status, body)
	}
	var rc refreshableCred
	if err := json.Unmarshal([]byte(body), &rc); err != nil {
		c.t.Fatalf("decode %s: %v", body, err)
	}
	return rc
}

func (c *imdsClient) do(req *http.Request) (int, string, http.Header) {
	c.t.Helper()
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), resp.Header
}

// TestUpstreamRealHelper runs the real aws_signing_helper against the fakes
// and checks what it serves for each key type and session length.
func TestUpstreamRealHelper(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		key      fakeaws.KeyType
		duration time.Duration
	}{
		{"ecdsa 1h", fakeaws.ECDSAP256, time.Hour},
		{"rsa 2h", fakeaws.RSA2048, 2 * time.Hour},
		{"ecdsa 15m", fakeaws.ECDSAP256, 15 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := testenv.StartUpstream(t, testenv.UpstreamConfig{KeyType: tc.key, SessionDuration: tc.duration})
			c := newIMDSClient(t, u.HelperURL)

			status, body := c.get("/latest/meta-data/iam/security-credentials/")
			if status != 200 || body != "pdr-base" {
				t.Fatalf("role list: %d %q, want 200 pdr-base", status, body)
			}
			before := time.Now()
			rc := c.creds("pdr-base")
			if rc.Code != "Success" || rc.Type != "AWS-HMAC" || !strings.HasPrefix(rc.AccessKeyId, "ASIA") {
				t.Fatalf("credential document %+v", rc)
			}
			is, ok := u.Store.Lookup(rc.AccessKeyId)
			if !ok {
				t.Fatalf("helper served key %s that the fake never issued", rc.AccessKeyId)
			}
			if is.SecretAccessKey != rc.SecretAccessKey || is.SessionToken != rc.Token || !is.Expiration.Equal(rc.Expiration) {
				t.Fatalf("served credentials differ from the store entry")
			}
			if !is.Chained || is.RoleARN != u.RoleARN {
				t.Errorf("store entry role %s chained %v", is.RoleARN, is.Chained)
			}
			// The session was created when the helper started, just before.
			if left := rc.Expiration.Sub(before); left > tc.duration || left < tc.duration-time.Minute {
				t.Errorf("expires in %s, want about %s", left, tc.duration)
			}
			st := u.RA.Stats()
			if st.LastDuration != tc.duration {
				t.Errorf("fake granted %s, want %s", st.LastDuration, tc.duration)
			}
			// Outside its 10-minute refresh window the helper serves its cached
			// session: a second GET must not call CreateSession again.
			if again := c.creds("pdr-base"); again.AccessKeyId != rc.AccessKeyId {
				t.Errorf("second GET served a new key %s", again.AccessKeyId)
			}
			if n := u.RA.Stats().Sessions; n != st.Sessions {
				t.Errorf("CreateSession calls went %d -> %d on a cached GET", st.Sessions, n)
			}
			// Documented upstream quirk the broker must tolerate: any other
			// name under security-credentials/ answers the role name.
			if status, body := c.get("/latest/meta-data/iam/security-credentials/someone-else"); status != 200 || body != "pdr-base" {
				t.Errorf("foreign role name: %d %q", status, body)
			}
			t.Logf("helper %s: CreateSession calls %d, key %s… expires %s", tc.name, u.RA.Stats().Sessions, rc.AccessKeyId[:8], rc.Expiration.Format(time.RFC3339))
		})
	}
}

// TestUpstreamSDKAndSTS: the real SDK credential provider reads the helper,
// and the STS fake accepts the keys (the broker's path).
func TestUpstreamSDKAndSTS(t *testing.T) {
	t.Parallel()
	u := testenv.StartUpstream(t, testenv.UpstreamConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prov := ec2rolecreds.New(func(o *ec2rolecreds.Options) {
		o.Client = imds.New(imds.Options{Endpoint: u.HelperURL})
	})
	creds, err := prov.Retrieve(ctx)
	if err != nil {
		t.Fatalf("ec2rolecreds via helper: %v", err)
	}
	if _, ok := u.Store.Lookup(creds.AccessKeyID); !ok || !creds.CanExpire {
		t.Fatalf("SDK got key %s (expires %v) not in the store", creds.AccessKeyID, creds.Expires)
	}
	client := sts.New(sts.Options{
		Region:       u.Region,
		BaseEndpoint: aws.String(u.STSURL),
		Credentials:  aws.NewCredentialsCache(prov),
	})
	id, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatalf("GetCallerIdentity with helper keys: %v", err)
	}
	if aws.ToString(id.Account) != u.Account || !strings.HasPrefix(aws.ToString(id.Arn), "arn:aws:sts::123456789012:assumed-role/pdr-base/") {
		t.Errorf("caller identity %s %s", aws.ToString(id.Account), aws.ToString(id.Arn))
	}
	out, err := client.AssumeRole(ctx, &sts.AssumeRoleInput{
		RoleArn:         aws.String("arn:aws:iam::123456789012:role/app"),
		RoleSessionName: aws.String("upstream-test"),
		DurationSeconds: aws.Int32(3600),
	})
	if err != nil {
		t.Fatalf("AssumeRole with helper keys: %v", err)
	}
	if _, ok := u.Store.Lookup(aws.ToString(out.Credentials.AccessKeyId)); !ok {
		t.Errorf("AssumeRole key not in store")
	}
}

// TestUpstreamHelperFailure records what the helper serves when
// CreateSession fails: 200, "Code":"Success", empty keys and a zero
// Expiration (DESIGN.md §2). The broker must treat that as an upstream error.
// It also exercises Stop/Start (a helper outage) and recovery.
func TestUpstreamHelperFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
	}{
		{"500", http.StatusInternalServerError},
		{"503", http.StatusServiceUnavailable},
		{"403", http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := testenv.StartUpstream(t, testenv.UpstreamConfig{})
			if err := u.Stop(); err != nil {
				t.Fatal(err)
			}
			if u.HelperRunning() {
				t.Fatal("helper still running after Stop")
			}
			if _, err := http.Get(u.HelperURL + "/latest/api/token"); err == nil {
				t.Fatal("helper port still answers after Stop")
			}
			// The helper starts while CreateSession fails, so it holds no session.
			u.RA.FailNext(-1, tc.status)
			if err := u.Start(); err != nil {
				t.Fatal(err)
			}
			c := newIMDSClient(t, u.HelperURL)
			faultedBefore := u.RA.Stats().Faulted
			rc := c.creds("pdr-base")
			perGET := u.RA.Stats().Faulted - faultedBefore
			if rc.Code != "Success" || rc.AccessKeyId != "" || rc.SecretAccessKey != "" || rc.Token != "" || !rc.Expiration.IsZero() {
				t.Fatalf("on CreateSession %d the helper served %+v, want 200 Success with empty keys and zero expiration", tc.status, rc)
			}
			if perGET < 1 {
				t.Fatalf("GET with no session made %d CreateSession calls, want >= 1 (it refreshes)", perGET)
			}
			t.Logf("CreateSession %d: helper made %d attempts for one GET (SDK retries), served empty keys", tc.status, perGET)

			u.RA.ClearFaults()
			rc = c.creds("pdr-base")
			if _, ok := u.Store.Lookup(rc.AccessKeyId); !ok || rc.Expiration.IsZero() {
				t.Fatalf("after recovery the helper served %+v", rc)
			}
		})
	}
}

func TestNewUpstreamRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", "10.1.2.3:0", ":0", "localhost:0"} {
		_, err := testenv.NewUpstream(context.Background(), testenv.UpstreamConfig{PKIDir: t.TempDir(), RAListen: addr}, zaptest.NewLogger(t))
		if !errors.Is(err, testenv.ErrNotLoopback) {
			t.Errorf("RAListen %q: err %v, want ErrNotLoopback", addr, err)
		}
	}
}

// TestUpstreamHelperRefreshesShortSessions: with a session shorter than the
// helper's 10-minute refresh window (the profile cap clamps it to 5 min),
// every GET makes a CreateSession call and serves a new key (DESIGN.md §2).
func TestUpstreamHelperRefreshesShortSessions(t *testing.T) {
	t.Parallel()
	u := testenv.StartUpstream(t, testenv.UpstreamConfig{MaxDuration: 5 * time.Minute, SessionDuration: 15 * time.Minute})
	c := newIMDSClient(t, u.HelperURL)
	seen := map[string]bool{}
	start := u.RA.Stats().Sessions
	const gets = 3
	for range gets {
		rc := c.creds("pdr-base")
		if left := time.Until(rc.Expiration); left > 5*time.Minute || left < 4*time.Minute {
			t.Fatalf("served expiration in %s, want about 5m", left)
		}
		seen[rc.AccessKeyId] = true
	}
	if got := u.RA.Stats().Sessions - start; got != gets || len(seen) != gets {
		t.Fatalf("%d GETs made %d CreateSession calls and served %d distinct keys, want %d each", gets, got, len(seen), gets)
	}
}
