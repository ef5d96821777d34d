package fakeaws

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

type nopCloser struct{ io.Reader }

func (nopCloser) Close() error { return nil }

// signedRequest builds a POST to url signed by the SDK's own SigV4 signer,
// an implementation independent of the verifier under test.
func signedRequest(t *testing.T, url, body string, is Issued, at time.Time) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	sum := sha256.Sum256([]byte(body))
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{
		AccessKeyID: is.AccessKeyID, SecretAccessKey: is.SecretAccessKey, SessionToken: is.SessionToken,
	}, req, hex.EncodeToString(sum[:]), "sts", "us-east-1", at)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func readErrorCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	var doc errorResponse
	if err := xml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("error body %q: %v", b, err)
	}
	if doc.RequestID == "" || doc.Error.Type == "" || doc.Error.Message == "" {
		t.Errorf("incomplete error document %q", b)
	}
	return doc.Error.Code
}

// capture sends req to a loopback server and returns what its handler saw.
func capture(t *testing.T, build func(base string) *http.Request) (*http.Request, []byte) {
	t.Helper()
	var got *http.Request
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ = io.ReadAll(r.Body)
		got = r
	}))
	defer srv.Close()
	resp, err := http.DefaultClient.Do(build(srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return got, body
}

func TestSigV4VerifiesSDKSignatures(t *testing.T) {
	t.Parallel()
	is := Issued{AccessKeyID: "ASIATEST", SecretAccessKey: "secret/with+chars", SessionToken: "tok"}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name   string
		path   string
		body   string
		secret string
		want   error
	}{
		{"form post", "/", "Action=GetCallerIdentity&Version=2011-06-15", is.SecretAccessKey, nil},
		{"query string", "/x/y?b=2&a=1&a=0&sp=a%20b", "", is.SecretAccessKey, nil},
		{"empty body", "/", "", is.SecretAccessKey, nil},
		{"wrong secret", "/", "Action=GetCallerIdentity", "other", ErrSignatureMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srvReq, body := capture(t, func(base string) *http.Request {
				return signedRequest(t, base+tt.path, tt.body, is, at)
			})
			a, err := ParseSigV4(srvReq)
			if err != nil {
				t.Fatal(err)
			}
			if a.AccessKeyID != is.AccessKeyID || a.Service != "sts" || a.Region != "us-east-1" || a.Date != "20260102" {
				t.Errorf("parsed %+v", a)
			}
			if err := a.Verify(srvReq, body, tt.secret); !errors.Is(err, tt.want) {
				t.Errorf("Verify = %v, want %v", err, tt.want)
			}
			if err := a.CheckScope("sts", "us-east-1", at.Add(4*time.Minute), 5*time.Minute); err != nil {
				t.Errorf("CheckScope: %v", err)
			}
			if err := a.CheckScope("sts", "us-east-1", at.Add(-6*time.Minute), 5*time.Minute); !errors.Is(err, ErrClockSkew) {
				t.Errorf("CheckScope skew = %v", err)
			}
			if err := a.CheckScope("iam", "", at, 5*time.Minute); !errors.Is(err, ErrWrongScope) {
				t.Errorf("CheckScope service = %v", err)
			}
			if err := a.CheckScope("sts", "eu-west-1", at, 5*time.Minute); !errors.Is(err, ErrWrongScope) {
				t.Errorf("CheckScope region = %v", err)
			}
		})
	}
}

func TestParseSigV4Rejects(t *testing.T) {
	t.Parallel()
	good := "AWS4-HMAC-SHA256 Credential=AK/20260102/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=abcd"
	tests := []struct {
		name, auth, date string
		want             error
	}{
		{"ok", good, "20260102T030405Z", nil},
		{"missing", "", "20260102T030405Z", ErrMissingAuth},
		{"other algorithm", strings.Replace(good, "AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256", 1), "20260102T030405Z", ErrMalformedAuth},
		{"short scope", strings.Replace(good, "/sts/aws4_request", "/sts", 1), "20260102T030405Z", ErrMalformedAuth},
		{"no signature", strings.Replace(good, ", Signature=abcd", "", 1), "20260102T030405Z", ErrMalformedAuth},
		{"host unsigned", strings.Replace(good, "host;", "", 1), "20260102T030405Z", ErrMalformedAuth},
		{"date unsigned", strings.Replace(good, ";x-amz-date", "", 1), "20260102T030405Z", ErrMalformedAuth},
		{"bad date", good, "yesterday", ErrMalformedAuth},
		{"scope date differs", good, "20260103T030405Z", ErrMalformedAuth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/", nil)
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			r.Header.Set("X-Amz-Date", tt.date)
			_, err := ParseSigV4(r)
			if !errors.Is(err, tt.want) {
				t.Errorf("ParseSigV4 = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestSigningKeyVector checks key derivation against the example in the
// SigV4 documentation (secret wJalr..., 20120215, us-east-1, iam).
func TestSigningKeyVector(t *testing.T) {
	t.Parallel()
	got := hex.EncodeToString(SigningKey("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam"))
	const want = "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
	if got != want {
		t.Errorf("SigningKey = %s, want %s", got, want)
	}
}

func FuzzParseSigV4(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=AK/20260102/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=abcd", "20260102T030405Z")
	f.Add("AWS4-HMAC-SHA256 Credential=/////, SignedHeaders=, Signature=", "")
	f.Fuzz(func(t *testing.T, auth, date string) {
		r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/", strings.NewReader("x"))
		r.Header.Set("Authorization", auth)
		r.Header.Set("X-Amz-Date", date)
		a, err := ParseSigV4(r)
		if err != nil {
			return
		}
		if a.AccessKeyID == "" || a.Date != a.AmzDate.Format(scopeDate) || !signedHeader(a, "host") || !signedHeader(a, "x-amz-date") {
			t.Fatalf("accepted incomplete authorization %+v", a)
		}
		// Verification must not panic and must reject a random secret.
		if a.Verify(r, []byte("x"), "secret") == nil && a.Signature == "" {
			t.Fatal("empty signature verified")
		}
	})
}
