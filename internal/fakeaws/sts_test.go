package fakeaws

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
)

const (
	testAccount = "123456789012"
	baseRole    = "arn:aws:iam::123456789012:role/base"
	appRole     = "arn:aws:iam::123456789012:role/app/web"
	extRole     = "arn:aws:iam::123456789012:role/needs-ext"
	longRole    = "arn:aws:iam::123456789012:role/long"
	deniedRole  = "arn:aws:iam::123456789012:role/secret"
)

// clock is a settable clock for the store; it starts at real time because
// the SDK signs with the real clock and the fake checks skew against it.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.off) }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

type fixture struct {
	store *Store
	clk   *clock
	sts   *STS
	url   string
	base  Issued // a Roles Anywhere-like chained session of baseRole
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	clk := &clock{}
	store := NewStore(clk.Now)
	fake := NewSTS(store, STSConfig{
		Trust: []TrustRule{
			{Principal: baseRole, Role: "arn:aws:iam::123456789012:role/app/*"},
			{Principal: baseRole, Role: extRole},
			{Principal: baseRole, Role: longRole},
			{Principal: "arn:aws:iam::123456789012:role/app/*", Role: longRole},
		},
		Roles: map[string]RolePolicy{
			extRole:  {ExternalID: "ext-123"},
			longRole: {MaxSessionDuration: 12 * time.Hour},
		},
		Region: "us-east-1",
	})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	base := store.Issue(testAccount, baseRole, "arn:aws:sts::123456789012:assumed-role/base/host-1", time.Hour, true)
	return &fixture{store: store, clk: clk, sts: fake, url: srv.URL, base: base}
}

func (f *fixture) client(is Issued) *sts.Client {
	return sts.New(sts.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(f.url),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: is.AccessKeyID, SecretAccessKey: is.SecretAccessKey, SessionToken: is.SessionToken}, nil
		}),
		Retryer: aws.NopRetryer{},
	})
}

// apiErr returns the AWS error code and HTTP status of err.
func apiErr(t *testing.T, err error) (string, int) {
	t.Helper()
	if err == nil {
		t.Fatal("want an error, got success")
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("not an API error: %v", err)
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	return ae.ErrorCode(), status
}

func TestSTSGetCallerIdentity(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	out, err := f.client(f.base).GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	if got := aws.ToString(out.Arn); got != f.base.PrincipalARN {
		t.Errorf("Arn = %q, want %q", got, f.base.PrincipalARN)
	}
	if got := aws.ToString(out.Account); got != testAccount {
		t.Errorf("Account = %q", got)
	}
	if got, want := aws.ToString(out.UserId), RoleID(baseRole)+":host-1"; got != want {
		t.Errorf("UserId = %q, want %q", got, want)
	}
	if n := f.sts.Calls(ActionGetCallerIdentity); n != 1 {
		t.Errorf("Calls(GetCallerIdentity) = %d, want 1", n)
	}
}

func TestSTSAssumeRoleThenUseSession(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	out, err := f.client(f.base).AssumeRole(context.Background(), &sts.AssumeRoleInput{
		RoleArn:         aws.String(appRole),
		RoleSessionName: aws.String("web-1"),
		DurationSeconds: aws.Int32(3600),
	})
	if err != nil {
		t.Fatal(err)
	}
	wantARN := "arn:aws:sts::123456789012:assumed-role/web/web-1"
	if got := aws.ToString(out.AssumedRoleUser.Arn); got != wantARN {
		t.Errorf("AssumedRoleUser.Arn = %q, want %q", got, wantARN)
	}
	if got := aws.ToString(out.AssumedRoleUser.AssumedRoleId); got != RoleID(appRole)+":web-1" {
		t.Errorf("AssumedRoleId = %q", got)
	}
	c := out.Credentials
	is, ok := f.store.Lookup(aws.ToString(c.AccessKeyId))
	if !ok {
		t.Fatal("returned key not in store")
	}
	if is.SecretAccessKey != aws.ToString(c.SecretAccessKey) || is.SessionToken != aws.ToString(c.SessionToken) {
		t.Error("returned secret/token differ from the store")
	}
	if !is.Chained || is.RoleARN != appRole || is.PrincipalARN != wantARN {
		t.Errorf("issued = %+v", is)
	}
	if d := c.Expiration.Sub(f.clk.Now()); d < 59*time.Minute || d > time.Hour+time.Second {
		t.Errorf("expiration in %v, want ~1h", d)
	}
	if n := f.sts.RoleCalls(appRole); n != 1 {
		t.Errorf("RoleCalls = %d", n)
	}

	// The new session is usable for signing, and chained rules apply to it.
	sess := f.client(is)
	id, err := sess.GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(id.Arn) != wantARN {
		t.Errorf("caller arn = %q", aws.ToString(id.Arn))
	}
	_, err = sess.AssumeRole(context.Background(), &sts.AssumeRoleInput{
		RoleArn: aws.String(longRole), RoleSessionName: aws.String("chain"), DurationSeconds: aws.Int32(7200),
	})
	if code, status := apiErr(t, err); code != "ValidationError" || status != 400 {
		t.Errorf("chained 7200s: %s %d, want ValidationError 400", code, status)
	}
}

func TestSTSAssumeRoleErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	unchained := f.store.Issue(testAccount, baseRole, "arn:aws:sts::123456789012:assumed-role/base/u", time.Hour, false)
	expired := f.store.Issue(testAccount, baseRole, "arn:aws:sts::123456789012:assumed-role/base/old", -time.Minute, true)
	wrongSecret := f.base
	wrongSecret.SecretAccessKey = "not-the-secret"
	unknown := f.base
	unknown.AccessKeyID = "ASIAUNKNOWNUNKNOWN"
	wrongToken := f.base
	wrongToken.SessionToken = "FQoGforged"

	tests := []struct {
		name       string
		creds      Issued
		in         sts.AssumeRoleInput
		wantCode   string
		wantStatus int
	}{
		{"wrong secret", wrongSecret, ar(appRole, "s1", 900), "SignatureDoesNotMatch", 403},
		{"unknown key", unknown, ar(appRole, "s1", 900), "InvalidClientTokenId", 403},
		{"wrong session token", wrongToken, ar(appRole, "s1", 900), "InvalidClientTokenId", 403},
		{"expired key", expired, ar(appRole, "s1", 900), "ExpiredToken", 400},
		{"untrusted role", f.base, ar(deniedRole, "s1", 900), "AccessDenied", 403},
		{"chained over 1h", f.base, ar(longRole, "s1", 3601), "ValidationError", 400},
		{"unchained over max", unchained, ar(appRole, "s1", 7200), "ValidationError", 400},
		{"below 900", f.base, ar(appRole, "s1", 899), "ValidationError", 400},
		{"above 43200", unchained, ar(longRole, "s1", 43201), "ValidationError", 400},
		{"bad session name", f.base, ar(appRole, "has space", 900), "ValidationError", 400},
		{"short session name", f.base, ar(appRole, "x", 900), "ValidationError", 400},
		{"external id missing", f.base, ar(extRole, "s1", 900), "AccessDenied", 403},
		{"external id wrong", f.base, withExt(ar(extRole, "s1", 900), "nope"), "AccessDenied", 403},
		{"bad role arn", f.base, ar("arn:aws:iam::12:role/x", "s1", 900), "ValidationError", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := f.client(tt.creds).AssumeRole(context.Background(), &tt.in)
			code, status := apiErr(t, err)
			if code != tt.wantCode || status != tt.wantStatus {
				t.Errorf("got %s %d, want %s %d (%v)", code, status, tt.wantCode, tt.wantStatus, err)
			}
		})
	}
}

func TestSTSAssumeRoleAllowed(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	unchained := f.store.Issue(testAccount, baseRole, "arn:aws:sts::123456789012:assumed-role/base/u", time.Hour, false)
	tests := []struct {
		name  string
		creds Issued
		in    sts.AssumeRoleInput
		want  time.Duration
	}{
		{"default duration", f.base, sts.AssumeRoleInput{RoleArn: aws.String(appRole), RoleSessionName: aws.String("a@b.c=d,e+f-g")}, time.Hour},
		{"external id right", f.base, withExt(ar(extRole, "s1", 900), "ext-123"), 15 * time.Minute},
		{"unchained long", unchained, ar(longRole, "s1", 43200), 12 * time.Hour},
		{"chained at 1h", f.base, ar(longRole, "s1", 3600), time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, err := f.client(tt.creds).AssumeRole(context.Background(), &tt.in)
			if err != nil {
				t.Fatal(err)
			}
			d := out.Credentials.Expiration.Sub(f.clk.Now())
			if d < tt.want-time.Minute || d > tt.want+time.Second {
				t.Errorf("lifetime %v, want %v", d, tt.want)
			}
		})
	}
}

func ar(role, session string, secs int32) sts.AssumeRoleInput {
	return sts.AssumeRoleInput{RoleArn: aws.String(role), RoleSessionName: aws.String(session), DurationSeconds: aws.Int32(secs)}
}

func withExt(in sts.AssumeRoleInput, ext string) sts.AssumeRoleInput {
	in.ExternalId = aws.String(ext)
	return in
}

func TestSTSClockSkew(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.clk.Advance(6 * time.Minute)
	_, err := f.client(f.base).GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
	if code, status := apiErr(t, err); code != "SignatureDoesNotMatch" || status != 403 {
		t.Errorf("skewed: %s %d", code, status)
	}
	f.clk.Advance(-2 * time.Minute) // 4 minutes ahead is tolerated
	if _, err := f.client(f.base).GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{}); err != nil {
		t.Errorf("4m skew: %v", err)
	}
}

// TestSTSTamperedBody signs a request with the SDK's own signer, changes
// the body in flight and expects SignatureDoesNotMatch.
func TestSTSTamperedBody(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	body := "Action=AssumeRole&Version=2011-06-15&RoleArn=" + appRole + "&RoleSessionName=orig"
	tests := []struct {
		name     string
		mutate   func(*http.Request) string
		wantCode string
	}{
		{"untouched", func(*http.Request) string { return body }, ""},
		{"body changed", func(*http.Request) string { return strings.Replace(body, "orig", "evil", 1) }, "SignatureDoesNotMatch"},
		{"signed header changed", func(r *http.Request) string {
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=latin1")
			return body
		}, "SignatureDoesNotMatch"},
		{"date changed", func(r *http.Request) string {
			r.Header.Set("X-Amz-Date", time.Now().Add(time.Second).UTC().Format(amzDateLayout))
			return body
		}, "SignatureDoesNotMatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := signedRequest(t, f.url, body, f.base, time.Now())
			newBody := tt.mutate(req)
			req.Body = http.NoBody
			if newBody != "" {
				req.Body = nopCloser{strings.NewReader(newBody)}
				req.ContentLength = int64(len(newBody))
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			code := readErrorCode(t, resp)
			if code != tt.wantCode {
				t.Errorf("code %q, want %q (status %d)", code, tt.wantCode, resp.StatusCode)
			}
		})
	}
}

func TestSTSFaultInjection(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.client(f.base)
	call := func() error {
		_, err := c.GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
		return err
	}

	f.sts.ThrottleNext(2)
	for i := range 2 {
		if code, status := apiErr(t, call()); code != "Throttling" || status != 400 {
			t.Errorf("throttled call %d: %s %d", i, code, status)
		}
	}
	if err := call(); err != nil {
		t.Errorf("after throttle budget: %v", err)
	}

	f.sts.FailNext(1)
	if code, status := apiErr(t, call()); code != "InternalFailure" || status != 500 {
		t.Errorf("FailNext: %s %d", code, status)
	}
	if err := call(); err != nil {
		t.Errorf("after FailNext: %v", err)
	}

	f.sts.SetFailAll(true)
	for range 3 {
		if code, _ := apiErr(t, call()); code != "InternalFailure" {
			t.Errorf("fail-all: %s", code)
		}
	}
	f.sts.SetFailAll(false)

	f.sts.SetThrottleFraction(1)
	if code, _ := apiErr(t, call()); code != "Throttling" {
		t.Errorf("fraction 1: %s", code)
	}
	f.sts.SetThrottleFraction(0)

	f.sts.FaultOnly(ActionAssumeRole)
	f.sts.SetFailAll(true)
	if err := call(); err != nil {
		t.Errorf("fault scoped to AssumeRole hit GetCallerIdentity: %v", err)
	}
	f.sts.SetFailAll(false)
	f.sts.FaultOnly("")

	f.sts.SetLatency(150 * time.Millisecond)
	start := time.Now()
	if err := call(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("latency %v, want >=150ms", d)
	}
	f.sts.SetLatency(0)

	if got := f.sts.Errors("Throttling"); got != 3 {
		t.Errorf("Errors(Throttling) = %d, want 3", got)
	}
	if got := f.sts.Errors("InternalFailure"); got != 4 {
		t.Errorf("Errors(InternalFailure) = %d, want 4", got)
	}
	if got := f.sts.Calls(ActionGetCallerIdentity); got != 11 {
		t.Errorf("Calls = %d, want 11", got)
	}
}

// TestSTSFaultsConcurrent flips faults while calls run; under -race this
// proves the setters are safe, and the throttle fraction is roughly honoured.
func TestSTSFaultsConcurrent(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.client(f.base)
	f.sts.SetThrottleFraction(0.5)
	var ok, throttled atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f.sts.SetLatency(time.Duration(i%2) * time.Millisecond)
			f.sts.FaultOnly("")
			time.Sleep(time.Millisecond)
		}
	})
	var callers sync.WaitGroup
	for range 8 {
		callers.Go(func() {
			for range 25 {
				_, err := c.GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
				var ae smithy.APIError
				switch {
				case err == nil:
					ok.Add(1)
				case errors.As(err, &ae) && ae.ErrorCode() == "Throttling":
					throttled.Add(1)
				default:
					t.Errorf("unexpected: %v", err)
				}
			}
		})
	}
	callers.Wait()
	close(stop)
	wg.Wait()
	if ok.Load()+throttled.Load() != 200 {
		t.Fatalf("calls %d+%d", ok.Load(), throttled.Load())
	}
	// 200 Bernoulli(0.5) trials: [60,140] fails with probability < 1e-8.
	if n := throttled.Load(); n < 60 || n > 140 {
		t.Errorf("throttled %d of 200 at p=0.5", n)
	}
}

func TestSTSMissingAuthAndBadAction(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	resp, err := http.Post(f.url, "application/x-www-form-urlencoded", strings.NewReader("Action=GetCallerIdentity&Version=2011-06-15"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if code := readErrorCode(t, resp); code != "MissingAuthenticationToken" || resp.StatusCode != 403 {
		t.Errorf("no auth: %s %d", code, resp.StatusCode)
	}

	req := signedRequest(t, f.url, "Action=DeleteEverything&Version=2011-06-15", f.base, time.Now())
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	if code := readErrorCode(t, resp2); code != "InvalidAction" || resp2.StatusCode != 400 {
		t.Errorf("bad action: %s %d", code, resp2.StatusCode)
	}
}

func TestSTSStartLoopbackOnly(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := f.sts.Start(ctx, "0.0.0.0:0"); err == nil {
		t.Error("Start on 0.0.0.0 succeeded, want loopback-only refusal")
	}
	u, err := f.sts.Start(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.url = u
	if _, err := f.client(f.base).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil {
		t.Fatal(err)
	}
}

func TestGlobMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pat, s string
		want   bool
	}{
		{"arn:aws:iam::1:role/a", "arn:aws:iam::1:role/a", true},
		{"arn:aws:iam::1:role/a", "arn:aws:iam::1:role/ab", false},
		{"arn:aws:iam::1:role/*", "arn:aws:iam::1:role/path/x", true},
		{"arn:aws:iam::1:role/app-?", "arn:aws:iam::1:role/app-1", true},
		{"arn:aws:iam::1:role/app-?", "arn:aws:iam::1:role/app-12", false},
		{"*", "", true},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"", "x", false},
	}
	for _, tt := range tests {
		if got := globMatch(tt.pat, tt.s); got != tt.want {
			t.Errorf("globMatch(%q, %q) = %v", tt.pat, tt.s, got)
		}
	}
}

func TestSplitRoleARN(t *testing.T) {
	t.Parallel()
	tests := []struct {
		arn, acct, name string
		ok              bool
	}{
		{"arn:aws:iam::123456789012:role/web", "123456789012", "web", true},
		{"arn:aws-cn:iam::123456789012:role/p/q/web", "123456789012", "web", true},
		{"arn:aws:iam::123456789012:user/web", "", "", false},
		{"arn:aws:iam::12345678901x:role/web", "", "", false},
		{"arn:aws:iam::123456789012:role/", "", "", false},
		{"nope", "", "", false},
	}
	for _, tt := range tests {
		a, n, ok := splitRoleARN(tt.arn)
		if a != tt.acct || n != tt.name || ok != tt.ok {
			t.Errorf("splitRoleARN(%q) = %q %q %v", tt.arn, a, n, ok)
		}
	}
}
