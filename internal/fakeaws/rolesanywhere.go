package fakeaws

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Roles Anywhere verification errors. The handler maps each to an HTTP
// status and AWS error code; tests match them with errors.Is.
var (
	// ErrUntrustedCert: X-Amz-X509 is missing, unparsable or does not chain
	// to the configured CA.
	ErrUntrustedCert = errors.New("rolesanywhere: untrusted certificate")
	// ErrX509Auth: the Authorization header is missing or malformed, names
	// another certificate, algorithm, region or service, or the signature
	// does not verify with the certificate's key.
	ErrX509Auth = errors.New("rolesanywhere: bad x509 signature")
	// ErrRequestTime: X-Amz-Date is missing or outside the allowed skew.
	ErrRequestTime = errors.New("rolesanywhere: request time outside allowed skew")
	// ErrValidation: a parameter is missing or out of range.
	ErrValidation = errors.New("rolesanywhere: validation failed")
	// ErrNotAuthorized: trust anchor, profile or role is not the configured one.
	ErrNotAuthorized = errors.New("rolesanywhere: not authorized for this trust anchor, profile or role")
)

const (
	x509RSAAlgorithm   = "AWS4-X509-RSA-SHA256"
	x509ECDSAAlgorithm = "AWS4-X509-ECDSA-SHA256"
	raService          = "rolesanywhere"
	// Bounds of CreateSession's durationSeconds (API reference).
	raMinDuration  = 900 * time.Second
	raMaxDuration  = 43200 * time.Second
	raMaxBodyBytes = 64 << 10
)

// RAConfig describes the one trust anchor and profile the fake serves.
type RAConfig struct {
	// Roots are the trust anchor's CA certificates; CA, if set, is added.
	Roots *x509.CertPool
	CA    *x509.Certificate

	Region         string // signing region the requests must use, e.g. us-east-1
	TrustAnchorARN string
	ProfileARN     string
	// RoleARNs are the roles the profile allows.
	RoleARNs []string

	// MaxDuration is the profile's session length cap (default 12h, the
	// API maximum); longer requests are clamped to it, as the service does.
	// Values under 15 minutes are a test knob: they make the helper refresh
	// (call CreateSession) on every GET.
	MaxDuration time.Duration
	// DefaultDuration applies when the body has no durationSeconds (1h).
	DefaultDuration time.Duration
	// MaxSkew bounds |X-Amz-Date - now| (default 5 minutes).
	MaxSkew time.Duration

	Log *zap.Logger
}

func (c *RAConfig) setDefaults() {
	if c.MaxDuration <= 0 || c.MaxDuration > raMaxDuration {
		c.MaxDuration = raMaxDuration
	}
	if c.DefaultDuration <= 0 {
		c.DefaultDuration = time.Hour
	}
	if c.MaxSkew <= 0 {
		c.MaxSkew = 5 * time.Minute
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
	if c.Roots == nil {
		c.Roots = x509.NewCertPool()
	}
	if c.CA != nil {
		c.Roots.AddCert(c.CA)
	}
}

// RAStats counts what the fake saw; e2e tests read them to prove which path
// (cache, refresh, outage) a request took.
type RAStats struct {
	Requests int // every POST /sessions, including faulted ones
	Sessions int // credential sets issued
	Rejected int // 4xx answers
	Faulted  int // injected failures
	// LastDuration is the session length granted last.
	LastDuration time.Duration
}

// RolesAnywhere is a loopback fake of IAM Roles Anywhere CreateSession for
// the real aws_signing_helper. It verifies the X.509 SigV4 signature with the
// presented certificate, checks the certificate chains to the test CA, and
// issues credentials into the Store so the STS fake accepts them.
type RolesAnywhere struct {
	store *Store
	cfg   RAConfig
	roles map[string]bool

	mu        sync.Mutex
	stats     RAStats
	failLeft  int // >0: that many; <0: until ClearFaults
	failCode  int
	latency   time.Duration
	last      Issued
	lastValid bool
}

// NewRolesAnywhere returns the fake; cfg's zero fields get defaults.
func NewRolesAnywhere(store *Store, cfg RAConfig) *RolesAnywhere {
	cfg.setDefaults()
	roles := make(map[string]bool, len(cfg.RoleARNs))
	for _, r := range cfg.RoleARNs {
		roles[r] = true
	}
	return &RolesAnywhere{store: store, cfg: cfg, roles: roles}
}

// FailNext makes the next n CreateSession calls answer status (e.g. 500)
// before any verification; n < 0 fails until ClearFaults.
func (ra *RolesAnywhere) FailNext(n, status int) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	ra.failLeft, ra.failCode = n, status
}

// SetLatency delays every answer by d (0 turns it off).
func (ra *RolesAnywhere) SetLatency(d time.Duration) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	ra.latency = d
}

// ClearFaults removes injected failures and latency.
func (ra *RolesAnywhere) ClearFaults() {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	ra.failLeft, ra.latency = 0, 0
}

// Stats returns a snapshot of the counters.
func (ra *RolesAnywhere) Stats() RAStats {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	return ra.stats
}

// LastIssued returns the credentials issued most recently.
func (ra *RolesAnywhere) LastIssued() (Issued, bool) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	return ra.last, ra.lastValid
}

// ServeHTTP implements POST /sessions.
func (ra *RolesAnywhere) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ra.mu.Lock()
	ra.stats.Requests++
	latency := ra.latency
	fault := 0
	if ra.failLeft != 0 {
		fault = ra.failCode
		if ra.failLeft > 0 {
			ra.failLeft--
		}
		ra.stats.Faulted++
	}
	ra.mu.Unlock()

	if latency > 0 {
		if err := sleepCtx(r.Context(), latency); err != nil {
			return
		}
	}
	if fault != 0 {
		ra.cfg.Log.Info("rolesanywhere: injected failure", zap.Int("status", fault))
		writeRAError(w, fault, "InternalServerException", "injected failure")
		return
	}
	if r.URL.Path != "/sessions" {
		ra.reject(w, http.StatusNotFound, "ResourceNotFoundException", fmt.Errorf("%w: path %s", ErrValidation, r.URL.Path))
		return
	}
	if r.Method != http.MethodPost {
		ra.reject(w, http.StatusMethodNotAllowed, "ValidationException", fmt.Errorf("%w: method %s", ErrValidation, r.Method))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, raMaxBodyBytes+1))
	if err != nil || len(body) > raMaxBodyBytes {
		ra.reject(w, http.StatusBadRequest, "ValidationException", fmt.Errorf("%w: read body", ErrValidation))
		return
	}
	cert, err := VerifyX509Request(r, body, X509VerifyConfig{
		Roots: ra.cfg.Roots, Region: ra.cfg.Region, Now: ra.store.Now(), MaxSkew: ra.cfg.MaxSkew,
	})
	if err != nil {
		ra.reject(w, http.StatusForbidden, "AccessDeniedException", err)
		return
	}
	resp, d, err := ra.createSession(r.URL.Query(), body, cert)
	if err != nil {
		status, code := http.StatusBadRequest, "ValidationException"
		if errors.Is(err, ErrNotAuthorized) {
			status, code = http.StatusForbidden, "AccessDeniedException"
		}
		ra.reject(w, status, code, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(resp)
	ra.cfg.Log.Info("rolesanywhere: session created",
		zap.String("role_arn", resp.CredentialSet[0].RoleARN),
		zap.String("serial", cert.SerialNumber.String()),
		zap.Duration("duration", d))
}

func (ra *RolesAnywhere) reject(w http.ResponseWriter, status int, code string, err error) {
	ra.mu.Lock()
	ra.stats.Rejected++
	ra.mu.Unlock()
	ra.cfg.Log.Info("rolesanywhere: rejected", zap.Int("status", status), zap.Error(err))
	writeRAError(w, status, code, err.Error())
}

type raSessionBody struct {
	DurationSeconds *int64 `json:"durationSeconds"`
	RoleSessionName string `json:"roleSessionName"`
	SessionName     string `json:"sessionName"`
}

type raCredentials struct {
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
	SessionToken    string `json:"sessionToken"`
	Expiration      string `json:"expiration"`
}

type raAssumedRoleUser struct {
	ARN           string `json:"arn"`
	AssumedRoleID string `json:"assumedRoleId"`
}

type raCredentialResponse struct {
	AssumedRoleUser  raAssumedRoleUser `json:"assumedRoleUser"`
	Credentials      raCredentials     `json:"credentials"`
	PackedPolicySize int               `json:"packedPolicySize"`
	RoleARN          string            `json:"roleArn"`
	SourceIdentity   string            `json:"sourceIdentity"`
}

type raCreateSessionOutput struct {
	CredentialSet []raCredentialResponse `json:"credentialSet"`
	SubjectARN    string                 `json:"subjectArn"`
}

func (ra *RolesAnywhere) createSession(q url.Values, body []byte, cert *x509.Certificate) (*raCreateSessionOutput, time.Duration, error) {
	profile, role, anchor := q.Get("profileArn"), q.Get("roleArn"), q.Get("trustAnchorArn")
	if profile == "" || role == "" || anchor == "" {
		return nil, 0, fmt.Errorf("%w: profileArn, roleArn and trustAnchorArn are required", ErrValidation)
	}
	if anchor != ra.cfg.TrustAnchorARN {
		return nil, 0, fmt.Errorf("%w: trust anchor %s", ErrNotAuthorized, anchor)
	}
	if profile != ra.cfg.ProfileARN {
		return nil, 0, fmt.Errorf("%w: profile %s", ErrNotAuthorized, profile)
	}
	if !ra.roles[role] {
		return nil, 0, fmt.Errorf("%w: role %s", ErrNotAuthorized, role)
	}
	account, roleName, err := raParseRoleARN(role)
	if err != nil {
		return nil, 0, err
	}
	var in raSessionBody
	if len(body) > 0 {
		if err := json.Unmarshal(body, &in); err != nil {
			return nil, 0, fmt.Errorf("%w: body: %v", ErrValidation, err)
		}
	}
	d := ra.cfg.DefaultDuration
	if in.DurationSeconds != nil {
		d = time.Duration(*in.DurationSeconds) * time.Second
		if d < raMinDuration || d > raMaxDuration {
			return nil, 0, fmt.Errorf("%w: durationSeconds %d not in 900..43200", ErrValidation, *in.DurationSeconds)
		}
	}
	d = min(d, ra.cfg.MaxDuration)

	// The service names the session after the certificate serial unless the
	// caller chose a role session name.
	session := in.RoleSessionName
	if session == "" {
		session = fmt.Sprintf("%x", cert.SerialNumber)
	}
	principal := fmt.Sprintf("arn:aws:sts::%s:assumed-role/%s/%s", account, roleName, session)
	is := ra.store.Issue(account, role, principal, d, true)

	ra.mu.Lock()
	ra.stats.Sessions++
	ra.stats.LastDuration = d
	ra.last, ra.lastValid = is, true
	ra.mu.Unlock()

	return &raCreateSessionOutput{
		CredentialSet: []raCredentialResponse{{
			AssumedRoleUser: raAssumedRoleUser{ARN: principal, AssumedRoleID: "AROA" + randomID(17) + ":" + session},
			Credentials: raCredentials{
				AccessKeyID:     is.AccessKeyID,
				SecretAccessKey: is.SecretAccessKey,
				SessionToken:    is.SessionToken,
				Expiration:      is.Expiration.UTC().Format(time.RFC3339),
			},
			RoleARN:        role,
			SourceIdentity: "CN=" + cert.Subject.CommonName,
		}},
		SubjectARN: fmt.Sprintf("arn:aws:rolesanywhere:%s:%s:subject/%s", ra.cfg.Region, account, strings.ToLower(randomID(26))),
	}, d, nil
}

// raParseRoleARN splits arn:aws:iam::<account>:role[/path]/<name>.
func raParseRoleARN(s string) (account, name string, err error) {
	f := strings.SplitN(s, ":", 6)
	if len(f) != 6 || f[0] != "arn" || f[2] != "iam" || len(f[4]) != 12 || !strings.HasPrefix(f[5], "role/") {
		return "", "", fmt.Errorf("%w: role ARN %q", ErrValidation, s)
	}
	return f[4], f[5][strings.LastIndexByte(f[5], '/')+1:], nil
}

func writeRAError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-Errortype", code)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// X509VerifyConfig is what VerifyX509Request checks against.
type X509VerifyConfig struct {
	Roots   *x509.CertPool
	Region  string // expected scope region; empty accepts any
	Now     time.Time
	MaxSkew time.Duration
}

// VerifyX509Request checks a request signed the way aws_signing_helper signs
// CreateSession (SigV4 structure, but the string to sign is signed with the
// certificate's private key: AWS4-X509-{RSA,ECDSA}-SHA256 over
// SHA-256(string to sign)), and that the certificate in X-Amz-X509, with any
// intermediates in X-Amz-X509-Chain, chains to cfg.Roots. It returns the
// verified leaf certificate.
func VerifyX509Request(r *http.Request, body []byte, cfg X509VerifyConfig) (*x509.Certificate, error) {
	cert, err := verifyChain(r, cfg)
	if err != nil {
		return nil, err
	}
	auth, err := parseX509Auth(r.Header.Get("Authorization"))
	if err != nil {
		return nil, err
	}
	var wantAlg string
	switch cert.PublicKey.(type) {
	case *rsa.PublicKey:
		wantAlg = x509RSAAlgorithm
	case *ecdsa.PublicKey:
		wantAlg = x509ECDSAAlgorithm
	default:
		return nil, fmt.Errorf("%w: unsupported key type %T", ErrX509Auth, cert.PublicKey)
	}
	if auth.algorithm != wantAlg {
		return nil, fmt.Errorf("%w: algorithm %s for a %s key", ErrX509Auth, auth.algorithm, wantAlg)
	}
	if auth.serial != cert.SerialNumber.String() {
		return nil, fmt.Errorf("%w: credential names serial %s, certificate has %s", ErrX509Auth, auth.serial, cert.SerialNumber)
	}
	if auth.service != raService || auth.terminator != "aws4_request" || (cfg.Region != "" && auth.region != cfg.Region) {
		return nil, fmt.Errorf("%w: scope %s/%s/%s", ErrX509Auth, auth.region, auth.service, auth.terminator)
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil {
		return nil, fmt.Errorf("%w: X-Amz-Date %q", ErrRequestTime, amzDate)
	}
	if skew := cfg.Now.Sub(t); skew > cfg.MaxSkew || -skew > cfg.MaxSkew {
		return nil, fmt.Errorf("%w: X-Amz-Date %s is %s from now", ErrRequestTime, amzDate, skew.Round(time.Second))
	}
	if auth.date != amzDate[:8] {
		return nil, fmt.Errorf("%w: scope date %s differs from X-Amz-Date %s", ErrX509Auth, auth.date, amzDate)
	}
	// The headers that bind the request to this certificate and time must be
	// signed, or a replayed signature could carry another certificate.
	signed := make(map[string]bool, len(auth.signedHeaders))
	for _, h := range auth.signedHeaders {
		signed[h] = true
	}
	for _, h := range []string{"host", "x-amz-date", "x-amz-x509"} {
		if !signed[h] {
			return nil, fmt.Errorf("%w: header %s not signed", ErrX509Auth, h)
		}
	}
	if r.Header.Get("X-Amz-X509-Chain") != "" && !signed["x-amz-x509-chain"] {
		return nil, fmt.Errorf("%w: header x-amz-x509-chain not signed", ErrX509Auth)
	}

	sts := x509StringToSign(r, body, auth, amzDate)
	digest := sha256.Sum256([]byte(sts))
	sig, err := hex.DecodeString(auth.signature)
	if err != nil {
		return nil, fmt.Errorf("%w: signature not hex", ErrX509Auth)
	}
	switch pub := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			err = errors.New("ecdsa verification failed")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrX509Auth, err)
	}
	return cert, nil
}

func verifyChain(r *http.Request, cfg X509VerifyConfig) (*x509.Certificate, error) {
	raw := r.Header.Get("X-Amz-X509")
	if raw == "" {
		return nil, fmt.Errorf("%w: no X-Amz-X509 header", ErrUntrustedCert)
	}
	cert, err := parseB64Cert(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: X-Amz-X509: %v", ErrUntrustedCert, err)
	}
	inter := x509.NewCertPool()
	if chain := r.Header.Get("X-Amz-X509-Chain"); chain != "" {
		for part := range strings.SplitSeq(chain, ",") {
			c, err := parseB64Cert(strings.TrimSpace(part))
			if err != nil {
				return nil, fmt.Errorf("%w: X-Amz-X509-Chain: %v", ErrUntrustedCert, err)
			}
			inter.AddCert(c)
		}
	}
	if cfg.Roots == nil {
		return nil, fmt.Errorf("%w: no trust anchor configured", ErrUntrustedCert)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:         cfg.Roots,
		Intermediates: inter,
		CurrentTime:   cfg.Now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("%w: serial %s: %v", ErrUntrustedCert, cert.SerialNumber, err)
	}
	return cert, nil
}

func parseB64Cert(s string) (*x509.Certificate, error) {
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

type x509Auth struct {
	algorithm                     string
	serial, date, region, service string
	terminator                    string
	signedHeaders                 []string
	signature                     string
}

// parseX509Auth parses "ALG Credential=serial/date/region/service/aws4_request,
// SignedHeaders=a;b, Signature=hex".
func parseX509Auth(h string) (*x509Auth, error) {
	if h == "" {
		return nil, fmt.Errorf("%w: no Authorization header", ErrX509Auth)
	}
	alg, rest, ok := strings.Cut(h, " ")
	if !ok || (alg != x509RSAAlgorithm && alg != x509ECDSAAlgorithm) {
		return nil, fmt.Errorf("%w: algorithm %q", ErrX509Auth, alg)
	}
	a := &x509Auth{algorithm: alg}
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%w: component %q", ErrX509Auth, part)
		}
		switch k {
		case "Credential":
			f := strings.Split(v, "/")
			if len(f) != 5 {
				return nil, fmt.Errorf("%w: credential %q", ErrX509Auth, v)
			}
			a.serial, a.date, a.region, a.service, a.terminator = f[0], f[1], f[2], f[3], f[4]
		case "SignedHeaders":
			a.signedHeaders = strings.Split(v, ";")
		case "Signature":
			a.signature = v
		default:
			return nil, fmt.Errorf("%w: component %q", ErrX509Auth, k)
		}
	}
	if a.serial == "" || len(a.signedHeaders) == 0 || a.signature == "" {
		return nil, fmt.Errorf("%w: incomplete Authorization header", ErrX509Auth)
	}
	return a, nil
}

// x509StringToSign rebuilds the string to sign from the request as received.
func x509StringToSign(r *http.Request, body []byte, a *x509Auth, amzDate string) string {
	payload := sha256.Sum256(body)
	var cr strings.Builder
	cr.WriteString(r.Method + "\n")
	cr.WriteString(r.URL.EscapedPath() + "\n")
	cr.WriteString(canonicalQueryX509(r.URL.RawQuery) + "\n")
	for _, h := range a.signedHeaders {
		cr.WriteString(h + ":" + canonicalHeader(r, h) + "\n")
	}
	cr.WriteString("\n")
	cr.WriteString(strings.Join(a.signedHeaders, ";") + "\n")
	cr.WriteString(hex.EncodeToString(payload[:]))
	crHash := sha256.Sum256([]byte(cr.String()))
	scope := strings.Join([]string{a.date, a.region, a.service, a.terminator}, "/")
	return a.algorithm + "\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(crHash[:])
}

// canonicalHeader joins a header's values with commas and squeezes spaces.
// Go's server moves Host and Content-Length out of the header map.
func canonicalHeader(r *http.Request, h string) string {
	var vals []string
	switch h {
	case "host":
		vals = []string{r.Host}
	case "content-length":
		vals = r.Header.Values(h)
		if len(vals) == 0 && r.ContentLength >= 0 {
			vals = []string{fmt.Sprint(r.ContentLength)}
		}
	default:
		vals = r.Header.Values(h)
	}
	v := strings.Join(vals, ",")
	return strings.Join(strings.Fields(v), " ")
}

// canonicalQueryX509 sorts the decoded parameters and re-encodes them with
// RFC 3986 escaping (space as %20).
func canonicalQueryX509(raw string) string {
	q, err := url.ParseQuery(raw)
	if err != nil || len(q) == 0 {
		return ""
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		vs := append([]string(nil), q[k]...)
		sort.Strings(vs)
		for _, v := range vs {
			parts = append(parts, rfc3986(k)+"="+rfc3986(v))
		}
	}
	return strings.Join(parts, "&")
}

func rfc3986(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
