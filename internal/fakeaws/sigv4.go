package fakeaws

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// SigV4 verification errors. The STS fake maps them to AWS error codes.
var (
	// ErrMissingAuth means the request carried no Authorization header.
	ErrMissingAuth = errors.New("sigv4: missing authentication")
	// ErrMalformedAuth means the Authorization header or X-Amz-Date could
	// not be parsed, or required parts are absent.
	ErrMalformedAuth = errors.New("sigv4: malformed authorization")
	// ErrSignatureMismatch means the recomputed signature differs.
	ErrSignatureMismatch = errors.New("sigv4: signature does not match")
	// ErrClockSkew means X-Amz-Date is too far from the verifier's clock.
	ErrClockSkew = errors.New("sigv4: request time too skewed")
	// ErrWrongScope means the credential scope names another service or region.
	ErrWrongScope = errors.New("sigv4: wrong credential scope")
)

const (
	sigV4Algorithm = "AWS4-HMAC-SHA256"
	amzDateLayout  = "20060102T150405Z"
	scopeDate      = "20060102"
)

// SigV4Auth is the parsed Authorization header of a SigV4-signed request.
type SigV4Auth struct {
	AccessKeyID   string
	Date          string // yyyymmdd from the credential scope
	Region        string
	Service       string
	SignedHeaders []string // lower case, in header order
	Signature     string   // hex
	AmzDate       time.Time
	AmzDateRaw    string
}

// ParseSigV4 parses the Authorization and X-Amz-Date headers of r. It does
// not check the signature; see SigV4Auth.Verify.
func ParseSigV4(r *http.Request) (*SigV4Auth, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, ErrMissingAuth
	}
	alg, rest, ok := strings.Cut(h, " ")
	if !ok || alg != sigV4Algorithm {
		return nil, fmt.Errorf("%w: algorithm %q", ErrMalformedAuth, alg)
	}
	a := &SigV4Auth{}
	var haveCred, haveSigned, haveSig bool
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%w: component %q", ErrMalformedAuth, part)
		}
		switch k {
		case "Credential":
			f := strings.Split(v, "/")
			if len(f) != 5 || f[4] != "aws4_request" || f[0] == "" {
				return nil, fmt.Errorf("%w: credential %q", ErrMalformedAuth, v)
			}
			a.AccessKeyID, a.Date, a.Region, a.Service = f[0], f[1], f[2], f[3]
			haveCred = true
		case "SignedHeaders":
			a.SignedHeaders = strings.Split(v, ";")
			haveSigned = true
		case "Signature":
			a.Signature = v
			haveSig = true
		}
	}
	if !haveCred || !haveSigned || !haveSig {
		return nil, fmt.Errorf("%w: need Credential, SignedHeaders and Signature", ErrMalformedAuth)
	}
	a.AmzDateRaw = r.Header.Get("X-Amz-Date")
	t, err := time.Parse(amzDateLayout, a.AmzDateRaw)
	if err != nil {
		return nil, fmt.Errorf("%w: X-Amz-Date %q", ErrMalformedAuth, a.AmzDateRaw)
	}
	a.AmzDate = t
	if a.Date != t.Format(scopeDate) {
		return nil, fmt.Errorf("%w: scope date %s differs from X-Amz-Date %s", ErrMalformedAuth, a.Date, a.AmzDateRaw)
	}
	// host and x-amz-date must be covered, or a signature could be replayed
	// against another endpoint or time.
	var host, date bool
	for _, s := range a.SignedHeaders {
		host = host || s == "host"
		date = date || s == "x-amz-date"
	}
	if !host || !date {
		return nil, fmt.Errorf("%w: signed headers %q must include host and x-amz-date", ErrMalformedAuth, a.SignedHeaders)
	}
	return a, nil
}

// CheckScope verifies the credential scope's service (and region, if
// region is not empty) and that AmzDate is within maxSkew of now.
func (a *SigV4Auth) CheckScope(service, region string, now time.Time, maxSkew time.Duration) error {
	if a.Service != service {
		return fmt.Errorf("%w: service %q, want %q", ErrWrongScope, a.Service, service)
	}
	if region != "" && a.Region != region {
		return fmt.Errorf("%w: region %q, want %q", ErrWrongScope, a.Region, region)
	}
	if d := now.Sub(a.AmzDate); d > maxSkew || d < -maxSkew {
		return fmt.Errorf("%w: request time %s, server time %s", ErrClockSkew, a.AmzDateRaw, now.UTC().Format(amzDateLayout))
	}
	return nil
}

// Verify recomputes the signature of r (whose body is body) with secret
// and compares it in constant time.
func (a *SigV4Auth) Verify(r *http.Request, body []byte, secret string) error {
	want := hex.EncodeToString(hmacSHA256(SigningKey(secret, a.Date, a.Region, a.Service), []byte(a.StringToSign(r, body))))
	if !hmac.Equal([]byte(want), []byte(strings.ToLower(a.Signature))) {
		return ErrSignatureMismatch
	}
	return nil
}

// StringToSign builds the SigV4 string to sign for r.
func (a *SigV4Auth) StringToSign(r *http.Request, body []byte) string {
	cr := CanonicalRequest(r, body, a.SignedHeaders)
	sum := sha256.Sum256([]byte(cr))
	return sigV4Algorithm + "\n" + a.AmzDateRaw + "\n" +
		a.Date + "/" + a.Region + "/" + a.Service + "/aws4_request\n" +
		hex.EncodeToString(sum[:])
}

// SigningKey derives the SigV4 signing key for one day, region and service.
func SigningKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte(service))
	return hmacSHA256(k, []byte("aws4_request"))
}

// CanonicalRequest builds the SigV4 canonical request of r over the named
// signed headers. The payload hash is always computed from body, so a
// tampered body cannot hide behind a forged X-Amz-Content-Sha256.
func CanonicalRequest(r *http.Request, body []byte, signed []string) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	p := r.URL.EscapedPath()
	if p == "" {
		p = "/"
	}
	b.WriteString(p)
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.Query()))
	b.WriteByte('\n')
	for _, h := range signed {
		b.WriteString(h)
		b.WriteByte(':')
		b.WriteString(canonicalHeaderValue(r, h))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(signed, ";"))
	b.WriteByte('\n')
	sum := sha256.Sum256(body)
	b.WriteString(hex.EncodeToString(sum[:]))
	return b.String()
}

// canonicalHeaderValue returns the trimmed, space-folded, comma-joined
// values of header h. Go's server moves Host and Content-Length out of
// r.Header, so they are read from their own fields.
func canonicalHeaderValue(r *http.Request, h string) string {
	var vals []string
	switch h {
	case "host":
		vals = []string{r.Host}
	case "content-length":
		if r.ContentLength >= 0 {
			vals = []string{strconv.FormatInt(r.ContentLength, 10)}
		}
	default:
		vals = r.Header.Values(h)
	}
	for i, v := range vals {
		vals[i] = strings.Join(strings.Fields(v), " ")
	}
	return strings.Join(vals, ",")
}

func canonicalQuery(q url.Values) string {
	if len(q) == 0 {
		return ""
	}
	type kv struct{ k, v string }
	var all []kv
	for k, vs := range q {
		for _, v := range vs {
			all = append(all, kv{uriEncode(k), uriEncode(v)})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].k != all[j].k {
			return all[i].k < all[j].k
		}
		return all[i].v < all[j].v
	})
	parts := make([]string, len(all))
	for i, p := range all {
		parts[i] = p.k + "=" + p.v
	}
	return strings.Join(parts, "&")
}

// uriEncode is the SigV4 URI encoding: RFC 3986 unreserved characters
// stay, everything else is %XX with upper-case hex.
func uriEncode(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') ||
			c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

func hmacSHA256(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}
