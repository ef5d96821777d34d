package fakeaws_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/fakeaws"
	"go.uber.org/zap/zaptest"
)

const (
	testAccount = "123456789012"
	testRegion  = "us-east-1"
	testAnchor  = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/11111111-2222-3333-4444-555555555555"
	testProfile = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/66666666-7777-8888-9999-000000000000"
	testRole    = "arn:aws:iam::123456789012:role/base-role"
)

// signedRequest is a CreateSession request as aws_signing_helper v1.4.0
// builds it, signed here by an independent implementation written from the
// protocol description (canonical request → string to sign → key signs
// SHA-256 of the string to sign).
type signedRequest struct {
	query  url.Values
	body   []byte
	date   time.Time
	leaf   *fakeaws.Leaf
	alg    string
	mutate func(*http.Request) // applied after signing (tampering)
}

func newSignedRequest(t *testing.T, target string, sr signedRequest) *http.Request {
	t.Helper()
	return newSignedRequestTB(t, target, sr)
}

func newSignedRequestTB(t testing.TB, target string, sr signedRequest) *http.Request {
	t.Helper()
	u := target + "/sessions?" + strings.ReplaceAll(sr.query.Encode(), "+", "%20")
	req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(sr.body))
	if err != nil {
		t.Fatal(err)
	}
	amzDate := sr.date.UTC().Format("20060102T150405Z")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Amz-Date", amzDate)
	req.Header.Set("X-Amz-X509", base64.StdEncoding.EncodeToString(sr.leaf.Cert.Raw))
	host := req.URL.Host
	bodyHash := sha256.Sum256(sr.body)
	canonical := strings.Join([]string{
		"POST",
		"/sessions",
		strings.ReplaceAll(sr.query.Encode(), "+", "%20"),
		"content-type:application/json",
		"host:" + host,
		"x-amz-date:" + amzDate,
		"x-amz-x509:" + req.Header.Get("X-Amz-X509"),
		"",
		"content-type;host;x-amz-date;x-amz-x509",
		hex.EncodeToString(bodyHash[:]),
	}, "\n")
	crHash := sha256.Sum256([]byte(canonical))
	scope := amzDate[:8] + "/" + testRegion + "/rolesanywhere/aws4_request"
	sts := sr.alg + "\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(crHash[:])
	digest := sha256.Sum256([]byte(sts))
	sig, err := sr.leaf.Key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", fmt.Sprintf("%s Credential=%s/%s, SignedHeaders=content-type;host;x-amz-date;x-amz-x509, Signature=%s",
		sr.alg, sr.leaf.Cert.SerialNumber, scope, hex.EncodeToString(sig)))
	if sr.mutate != nil {
		sr.mutate(req)
	}
	return req
}

func goodQuery() url.Values {
	return url.Values{"profileArn": {testProfile}, "roleArn": {testRole}, "trustAnchorArn": {testAnchor}}
}

type createSessionOut struct {
	CredentialSet []struct {
		AssumedRoleUser struct {
			Arn string `json:"arn"`
		} `json:"assumedRoleUser"`
		Credentials struct {
			AccessKeyID     string `json:"accessKeyId"`
			SecretAccessKey string `json:"secretAccessKey"`
			SessionToken    string `json:"sessionToken"`
			Expiration      string `json:"expiration"`
		} `json:"credentials"`
		RoleArn string `json:"roleArn"`
	} `json:"credentialSet"`
	SubjectArn string `json:"subjectArn"`
}

func TestRolesAnywhereCreateSession(t *testing.T) {
	t.Parallel()
	pki, err := fakeaws.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	otherPKI, err := fakeaws.NewPKI(t.TempDir()) // a CA the fake does not trust
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second) // frozen: durations are exact
	store := fakeaws.NewStore(func() time.Time { return now })
	ra := fakeaws.NewRolesAnywhere(store, fakeaws.RAConfig{
		CA: pki.CA, Region: testRegion, TrustAnchorARN: testAnchor, ProfileARN: testProfile,
		RoleARNs: []string{testRole}, MaxDuration: 6 * time.Hour, Log: zaptest.NewLogger(t),
	})
	srv := httptest.NewServer(ra)
	t.Cleanup(srv.Close)

	ecdsaAlg, rsaAlg := "AWS4-X509-ECDSA-SHA256", "AWS4-X509-RSA-SHA256"
	body := func(sec int) []byte { return fmt.Appendf(nil, `{"durationSeconds":%d}`, sec) }
	withQuery := func(k, v string) url.Values { q := goodQuery(); q.Set(k, v); return q }

	tests := []struct {
		name         string
		sr           signedRequest
		wantStatus   int
		wantDuration time.Duration
	}{
		{"ecdsa ok", signedRequest{query: goodQuery(), body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg}, 201, time.Hour},
		{"rsa ok", signedRequest{query: goodQuery(), body: body(900), date: now, leaf: pki.RSALeaf, alg: rsaAlg}, 201, 15 * time.Minute},
		{"duration clamped to profile max", signedRequest{query: goodQuery(), body: body(43200), date: now, leaf: pki.Leaf, alg: ecdsaAlg}, 201, 6 * time.Hour},
		{"default duration", signedRequest{query: goodQuery(), body: []byte(`{}`), date: now, leaf: pki.Leaf, alg: ecdsaAlg}, 201, time.Hour},
		{"duration too short", signedRequest{query: goodQuery(), body: body(899), date: now, leaf: pki.Leaf, alg: ecdsaAlg}, 400, 0},
		{"duration too long", signedRequest{query: goodQuery(), body: body(43201), date: now, leaf: pki.Leaf, alg: ecdsaAlg}, 400, 0},
		{"certificate from another CA", signedRequest{query: goodQuery(), body: body(3600), date: now, leaf: otherPKI.Leaf, alg: ecdsaAlg}, 403, 0},
		{"wrong algorithm for key", signedRequest{query: goodQuery(), body: body(3600), date: now, leaf: pki.Leaf, alg: rsaAlg}, 403, 0},
		{"clock skew", signedRequest{query: goodQuery(), body: body(3600), date: now.Add(-6 * time.Minute), leaf: pki.Leaf, alg: ecdsaAlg}, 403, 0},
		{"tampered body", signedRequest{query: goodQuery(), body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg, mutate: func(r *http.Request) {
			b := body(7200)
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
		}}, 403, 0},
		{"tampered query", signedRequest{query: goodQuery(), body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg, mutate: func(r *http.Request) {
			r.URL.RawQuery += "&extra=1"
		}}, 403, 0},
		{"tampered signed header", signedRequest{query: goodQuery(), body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg, mutate: func(r *http.Request) {
			r.Header.Set("Content-Type", "text/plain")
		}}, 403, 0},
		{"swapped certificate", signedRequest{query: goodQuery(), body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg, mutate: func(r *http.Request) {
			// A valid certificate of the same CA, but not the key that signed.
			r.Header.Set("X-Amz-X509", base64.StdEncoding.EncodeToString(pki.RSALeaf.Cert.Raw))
		}}, 403, 0},
		{"missing authorization", signedRequest{query: goodQuery(), body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg, mutate: func(r *http.Request) {
			r.Header.Del("Authorization")
		}}, 403, 0},
		{"wrong profile", signedRequest{query: withQuery("profileArn", strings.Replace(testProfile, "6666", "9999", 1)), body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg}, 403, 0},
		{"wrong role", signedRequest{query: withQuery("roleArn", "arn:aws:iam::123456789012:role/other"), body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg}, 403, 0},
		{"wrong trust anchor", signedRequest{query: withQuery("trustAnchorArn", strings.Replace(testAnchor, "1111", "2222", 1)), body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg}, 403, 0},
		{"missing role", signedRequest{query: url.Values{"profileArn": {testProfile}, "trustAnchorArn": {testAnchor}}, body: body(3600), date: now, leaf: pki.Leaf, alg: ecdsaAlg}, 400, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, err := srv.Client().Do(newSignedRequest(t, srv.URL, tc.sr))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tc.wantStatus, raw)
			}
			if tc.wantStatus != 201 {
				var e struct{ Message string }
				if err := json.Unmarshal(raw, &e); err != nil || e.Message == "" || resp.Header.Get("X-Amzn-Errortype") == "" {
					t.Fatalf("error body %s / type %q is not an AWS JSON error", raw, resp.Header.Get("X-Amzn-Errortype"))
				}
				return
			}
			var out createSessionOut
			if err := json.Unmarshal(raw, &out); err != nil {
				t.Fatalf("decode %s: %v", raw, err)
			}
			if len(out.CredentialSet) != 1 {
				t.Fatalf("credentialSet has %d entries", len(out.CredentialSet))
			}
			c := out.CredentialSet[0]
			exp, err := time.Parse(time.RFC3339, c.Credentials.Expiration)
			if err != nil {
				t.Fatal(err)
			}
			if got := exp.Sub(now); got != tc.wantDuration {
				t.Errorf("session length %s, want %s", got, tc.wantDuration)
			}
			is, ok := store.Lookup(c.Credentials.AccessKeyID)
			if !ok {
				t.Fatalf("issued key %s is not in the store", c.Credentials.AccessKeyID)
			}
			if is.SecretAccessKey != c.Credentials.SecretAccessKey || is.SessionToken != c.Credentials.SessionToken ||
				!is.Chained || is.RoleARN != testRole || is.Account != testAccount || is.PrincipalARN != c.AssumedRoleUser.Arn {
				t.Errorf("store entry %+v does not match response %+v", is, c)
			}
			wantPrefix := "arn:aws:sts::123456789012:assumed-role/base-role/"
			if !strings.HasPrefix(is.PrincipalARN, wantPrefix) || c.RoleArn != testRole {
				t.Errorf("principal %s / role %s", is.PrincipalARN, c.RoleArn)
			}
		})
	}
}

func TestRolesAnywhereFaults(t *testing.T) {
	t.Parallel()
	pki, err := fakeaws.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store := fakeaws.NewStore(nil)
	ra := fakeaws.NewRolesAnywhere(store, fakeaws.RAConfig{
		CA: pki.CA, Region: testRegion, TrustAnchorARN: testAnchor, ProfileARN: testProfile, RoleARNs: []string{testRole},
	})
	srv := httptest.NewServer(ra)
	t.Cleanup(srv.Close)
	call := func() int {
		t.Helper()
		req := newSignedRequest(t, srv.URL, signedRequest{query: goodQuery(), body: []byte(`{"durationSeconds":3600}`),
			date: time.Now(), leaf: pki.Leaf, alg: "AWS4-X509-ECDSA-SHA256"})
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	ra.FailNext(2, http.StatusServiceUnavailable)
	got := []int{call(), call(), call()}
	if want := []int{503, 503, 201}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("statuses %v, want %v", got, want)
	}
	ra.FailNext(-1, http.StatusInternalServerError)
	for range 3 {
		if s := call(); s != 500 {
			t.Fatalf("status %d while failing until cleared", s)
		}
	}
	ra.ClearFaults()
	ra.SetLatency(150 * time.Millisecond)
	start := time.Now()
	if s := call(); s != 201 {
		t.Fatalf("status %d after clear", s)
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("latency %s, want >= 150ms", el)
	}
	st := ra.Stats()
	if st.Requests != 7 || st.Faulted != 5 || st.Sessions != 2 || st.Rejected != 0 || st.LastDuration != time.Hour {
		t.Errorf("stats %+v, want 7 requests, 5 faulted, 2 sessions", st)
	}
	if is, ok := ra.LastIssued(); !ok || is.Expiration.IsZero() {
		t.Errorf("LastIssued = %+v, %v", is, ok)
	}
}

func TestVerifyX509RequestErrors(t *testing.T) {
	t.Parallel()
	pki, err := fakeaws.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cfg := fakeaws.X509VerifyConfig{Roots: pki.Pool(), Region: testRegion, Now: now, MaxSkew: time.Minute}
	body := []byte(`{"durationSeconds":900}`)
	tests := []struct {
		name   string
		mutate func(*http.Request)
		want   error
	}{
		{"ok", nil, nil},
		{"no certificate", func(r *http.Request) { r.Header.Del("X-Amz-X509") }, fakeaws.ErrUntrustedCert},
		{"garbage certificate", func(r *http.Request) { r.Header.Set("X-Amz-X509", "AAAA") }, fakeaws.ErrUntrustedCert},
		{"no date", func(r *http.Request) { r.Header.Del("X-Amz-Date") }, fakeaws.ErrRequestTime},
		{"wrong region", func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "/us-east-1/", "/eu-west-1/", 1))
		}, fakeaws.ErrX509Auth},
		{"wrong serial", func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "Credential=", "Credential=1", 1))
		}, fakeaws.ErrX509Auth},
		{"host not signed", func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "content-type;host;", "content-type;", 1))
		}, fakeaws.ErrX509Auth},
		{"flipped signature byte", func(r *http.Request) {
			a := r.Header.Get("Authorization")
			last := a[len(a)-1]
			repl := byte('0')
			if last == '0' {
				repl = '1'
			}
			r.Header.Set("Authorization", a[:len(a)-1]+string(repl))
		}, fakeaws.ErrX509Auth},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := newSignedRequest(t, "http://127.0.0.1:1", signedRequest{query: goodQuery(), body: body, date: now, leaf: pki.Leaf,
				alg: "AWS4-X509-ECDSA-SHA256", mutate: tc.mutate})
			// Client requests carry Host in URL; a server request has it in r.Host.
			req.Host = req.URL.Host
			_, err := fakeaws.VerifyX509Request(req, body, cfg)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzVerifyX509Request: arbitrary headers and queries never panic the
// verifier and never verify without a valid signature.
func FuzzVerifyX509Request(f *testing.F) {
	pki, err := fakeaws.NewPKI(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	good := newSignedRequestTB(f, "http://127.0.0.1:1", signedRequest{query: goodQuery(), body: []byte(`{}`), date: now, leaf: pki.Leaf, alg: "AWS4-X509-ECDSA-SHA256"})
	f.Add(good.Header.Get("Authorization"), good.Header.Get("X-Amz-X509"), good.Header.Get("X-Amz-Date"), good.URL.RawQuery, "")
	f.Add("AWS4-X509-RSA-SHA256 Credential=1/2/3/4/5, SignedHeaders=host, Signature=zz", "", "20260101T000000Z", "a=%zz", "x,y")
	f.Add("AWS4-X509-ECDSA-SHA256 Credential=//, SignedHeaders=;;, Signature=", "AAAA", "", "&&==", ",,,")
	cfg := fakeaws.X509VerifyConfig{Roots: pki.Pool(), Region: testRegion, Now: now, MaxSkew: time.Minute}
	f.Fuzz(func(t *testing.T, auth, cert, date, query, chain string) {
		req, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/sessions", nil)
		if err != nil {
			t.Skip()
		}
		req.URL.RawQuery = query
		req.Host = req.URL.Host
		req.Header.Set("Authorization", auth)
		req.Header.Set("X-Amz-X509", cert)
		req.Header.Set("X-Amz-Date", date)
		if chain != "" {
			req.Header.Set("X-Amz-X509-Chain", chain)
		}
		_, err = fakeaws.VerifyX509Request(req, []byte(`{}`), cfg)
		if err == nil && (auth != good.Header.Get("Authorization") || query != good.URL.RawQuery) {
			t.Fatalf("verified a request not signed by the leaf: auth %q query %q", auth, query)
		}
	})
}
