package imds

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// discardWriter is the cheapest http.ResponseWriter, so the benchmark
// measures the handler and not a recorder.
type discardWriter struct {
	h    http.Header
	code int
	n    int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(b []byte) (int, error) { w.n += len(b); return len(b), nil }

// warmRequest returns a server, and a credential GET from "app" on an
// already identified connection with a valid token.
func warmRequest(b testing.TB, log *zap.Logger) (*Server, *http.Request) {
	b.Helper()
	clock := &fakeClock{t: t0}
	broker := newFakeBroker()
	broker.quiet = true
	srv, err := New(Config{}, Deps{Identifier: newFakeIdentifier(), Broker: broker, Now: clock.Now}, log, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	peer := netip.AddrPortFrom(mustAddr(callers["app"].ip), 40000)
	st := &connState{peer: peer, done: make(chan struct{})}
	srv.resolve(context.Background(), st)
	ctx := context.WithValue(context.Background(), connKey{}, st)

	put := httptest.NewRequest("PUT", pToken, nil).WithContext(ctx)
	put.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, put)
	if rec.Code != 200 {
		b.Fatalf("mint: %d", rec.Code)
	}
	get := httptest.NewRequest("GET", pList+"app-role", nil).WithContext(ctx)
	get.Header.Set("X-aws-ec2-metadata-token", rec.Body.String())
	return srv, get
}

// BenchmarkWarmCredentialGET: a cached credential GET through the whole
// handler (wrapper, token check, role selection, broker hit, metrics,
// reply). The JSON is serialized once per Credentials value, so the bytes
// written are the cached slice.
func BenchmarkWarmCredentialGET(b *testing.B) {
	for _, bc := range []struct {
		name string
		log  *zap.Logger
	}{
		{"nop-log", zap.NewNop()},
		// Production: JSON at info, so each vend writes its audit line.
		{"json-info-log", zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zapcore.InfoLevel))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			srv, req := warmRequest(b, bc.log)
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				w.code = 0
				srv.ServeHTTP(w, req)
				if w.code != 200 {
					b.Fatalf("status %d", w.code)
				}
			}
		})
	}
}

// captureWriter remembers the slices written, to compare identities.
type captureWriter struct {
	discardWriter
	writes [][]byte
}

func (w *captureWriter) Write(b []byte) (int, error) {
	w.writes = append(w.writes, b)
	return len(b), nil
}

// TestCredentialBodyIsCached: the handler writes the Credentials value's
// own cached document (the same backing array every time), not a fresh
// serialization.
func TestCredentialBodyIsCached(t *testing.T) {
	t.Parallel()
	srv, req := warmRequest(t, zap.NewNop())
	want := newFakeBroker().byRole["arn:aws:iam::123456789012:role/app-role"].c // a different value: same bytes, other array
	var first []byte
	for i := range 3 {
		w := &captureWriter{discardWriter: discardWriter{h: http.Header{}}}
		srv.ServeHTTP(w, req)
		if w.code != 200 || len(w.writes) != 1 {
			t.Fatalf("status %d, %d writes", w.code, len(w.writes))
		}
		if string(w.writes[0]) != string(want.IMDSJSON(false)) {
			t.Fatalf("body %s", w.writes[0])
		}
		if i == 0 {
			first = w.writes[0]
		} else if &w.writes[0][0] != &first[0] {
			t.Fatal("request re-serialized the credentials (new backing array)")
		}
	}
}

func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{pToken, pToken + "/", pList, pList + "r", pList + "r/", pExt + "r", pInfo, pInfo + "/", "/", "", "//", pList + "/", pList + "a/b", "/latest/meta-data/iam/security-credentials-extendedX"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		r := parseRoute(path)
		trimmed := path
		if len(trimmed) > 1 {
			trimmed = strings.TrimSuffix(trimmed, "/")
		}
		switch r.kind {
		case routeUnknown:
			if r.role != "" || r.extended {
				t.Fatalf("%q: unknown route with fields %+v", path, r)
			}
		case routeToken:
			if trimmed != pToken {
				t.Fatalf("%q parsed as token", path)
			}
		case routeInfo:
			if trimmed != pInfo {
				t.Fatalf("%q parsed as info", path)
			}
		case routeRoleList:
			if want := map[bool]string{false: pathCreds, true: pathCredsExt}[r.extended]; trimmed != want {
				t.Fatalf("%q parsed as list %+v", path, r)
			}
		case routeCreds:
			prefix := pathCreds + "/"
			if r.extended {
				prefix = pathCredsExt + "/"
			}
			if r.role == "" || strings.Contains(r.role, "/") || trimmed != prefix+r.role {
				t.Fatalf("%q parsed as creds %+v", path, r)
			}
		default:
			t.Fatalf("%q: route kind %d", path, r.kind)
		}
		// One trailing slash never changes the route.
		if !strings.HasSuffix(path, "/") && path != "" {
			if r2 := parseRoute(path + "/"); r2 != r {
				t.Fatalf("%q → %+v but %q → %+v", path, r, path+"/", r2)
			}
		}
	})
}

func FuzzParseTTL(f *testing.F) {
	for _, s := range []string{"1", "21600", "0", "21601", "", "abc", "+5", "-1", "007", "1e3", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := parseTTL(v, MaxTokenTTL)
		n, err := strconv.ParseUint(v, 10, 64)
		digits := err == nil && !strings.HasPrefix(v, "+")
		want := digits && n >= 1 && n <= 21600
		if ok != want {
			t.Fatalf("parseTTL(%q) ok=%v, want %v", v, ok, want)
		}
		if ok && d != time.Duration(n)*time.Second {
			t.Fatalf("parseTTL(%q) = %s", v, d)
		}
	})
}

// FuzzHandler drives the whole handler with arbitrary method, path and
// header values. "$T" in the token header stands for a valid token of
// the caller. Invariants: never a 500, only the statuses the spec names,
// and a 200 on a metadata path only with the caller's valid token and,
// for credentials, the caller's own role name.
func FuzzHandler(f *testing.F) {
	f.Add("GET", pList+"app-role", "$T", "", false)
	f.Add("GET", pList+"other-role", "$T", "", false)
	f.Add("PUT", pToken, "", "300", false)
	f.Add("PUT", pToken, "", "300", true)
	f.Add("GET", pExt, "$T", "", false)
	f.Add("GET", pInfo+"/", "garbage", "", false)
	f.Add("HEAD", pList, "", "", false)
	f.Add("OPTIONS", "/", "$T", "1", true)

	clock := &fakeClock{t: t0}
	srv, err := New(Config{}, Deps{Identifier: newFakeIdentifier(), Broker: newFakeBroker(), Now: clock.Now}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	valid, err := srv.tokens.Mint(callers["app"].caller.Key(), time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	allowed := map[int]bool{200: true, 400: true, 401: true, 403: true, 404: true, 405: true}

	f.Fuzz(func(t *testing.T, method, path, tokenHdr, ttlHdr string, withXFF bool) {
		req, err := http.NewRequest(method, "http://169.254.169.254/", nil)
		if err != nil {
			return // not a method net/http would ever hand us
		}
		req.URL.Path = path
		req.RemoteAddr = callers["app"].ip + ":40000"
		if tokenHdr == "$T" {
			// Fuzzed PUTs share app's token quota: keep one valid token.
			if srv.tokens.Check(valid, callers["app"].caller.Key()) != nil {
				v, err := srv.tokens.Mint(callers["app"].caller.Key(), time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				valid = v
			}
			tokenHdr = valid
		}
		if tokenHdr != "" {
			req.Header.Set("X-aws-ec2-metadata-token", tokenHdr)
		}
		if ttlHdr != "" {
			req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", ttlHdr)
		}
		if withXFF {
			req.Header.Set("X-Forwarded-For", "1.2.3.4")
		}
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if !allowed[w.Code] {
			t.Fatalf("%s %q: status %d", method, path, w.Code)
		}
		if withXFF && w.Code != 403 {
			t.Fatalf("X-Forwarded-For answered %d", w.Code)
		}
		if w.Code != 200 {
			return
		}
		switch r := parseRoute(path); r.kind {
		case routeToken:
			if method != "PUT" {
				t.Fatalf("token minted on %s", method)
			}
		case routeCreds:
			if r.role != "app-role" {
				t.Fatalf("credentials served for %q", r.role)
			}
			fallthrough
		default:
			if tokenHdr != valid {
				t.Fatalf("%s %q served without the caller's token (header %q)", method, path, tokenHdr)
			}
		}
	})
}
