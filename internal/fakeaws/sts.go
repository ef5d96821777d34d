package fakeaws

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	stsVersion   = "2011-06-15"
	stsNamespace = "https://sts.amazonaws.com/doc/2011-06-15/"
	stsMaxBody   = 64 << 10

	// ActionAssumeRole and ActionGetCallerIdentity are the STS actions served.
	ActionAssumeRole        = "AssumeRole"
	ActionGetCallerIdentity = "GetCallerIdentity"
)

// TrustRule lets sessions of Principal assume Role. Both are role ARNs
// matched exactly or as globs where '*' matches any run of characters
// (including '/') and '?' one character.
type TrustRule struct {
	Principal string
	Role      string
}

// RolePolicy holds per-role settings of the fake.
type RolePolicy struct {
	// ExternalID, if set, must be passed as ExternalId to assume the role.
	ExternalID string
	// MaxSessionDuration is the role's IAM MaxSessionDuration (default 1h).
	MaxSessionDuration time.Duration
}

// STSConfig configures the STS fake.
type STSConfig struct {
	Trust []TrustRule
	// Roles maps a role ARN (exact) to its policy; roles absent here use
	// the defaults (no external id, 1h maximum).
	Roles map[string]RolePolicy
	// Region, if set, must be the region of the credential scope.
	Region string
	// MaxSkew bounds |X-Amz-Date - store clock| (default 5 minutes).
	MaxSkew time.Duration
	// IssueLifetime, when set, is the real lifetime of every AssumeRole
	// credential, whatever DurationSeconds asked for (which is still
	// validated). End-to-end tests use it to see several expiries and
	// refreshes of a real daemon in minutes instead of hours.
	IssueLifetime time.Duration
}

// STS is a loopback fake of AWS STS speaking the query protocol. It
// verifies SigV4 against keys issued by its Store. Safe for concurrent use.
type STS struct {
	store *Store
	cfg   STSConfig

	mu          sync.Mutex
	calls       map[string]int
	roleCalls   map[string]int
	errs        map[string]int
	latency     time.Duration
	throttleN   int
	throttleP   float64
	failN       int
	failAll     bool
	faultAction string
}

// NewSTS returns an STS fake backed by store.
func NewSTS(store *Store, cfg STSConfig) *STS {
	if cfg.MaxSkew == 0 {
		cfg.MaxSkew = 5 * time.Minute
	}
	return &STS{
		store:     store,
		cfg:       cfg,
		calls:     make(map[string]int),
		roleCalls: make(map[string]int),
		errs:      make(map[string]int),
	}
}

// Start serves the fake on addr, which must be a loopback address such as
// "127.0.0.1:0", until ctx is done. It returns the endpoint URL.
func (s *STS) Start(ctx context.Context, addr string) (string, error) {
	return serveLoopback(ctx, addr, s)
}

// ErrNotLoopback is returned for a listen address outside 127.0.0.0/8 or
// ::1: the fakes must never be reachable from another machine (DESIGN.md §5).
var ErrNotLoopback = errors.New("fakes listen on loopback addresses only")

// ListenLoopback listens on addr after checking it is a loopback IP.
func ListenLoopback(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("listen %s: %w", addr, ErrNotLoopback)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

func serveLoopback(ctx context.Context, addr string, h http.Handler) (string, error) {
	ln, err := ListenLoopback(addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return "http://" + ln.Addr().String(), nil
}

// Fault injection. Each setter may be called at any time, concurrently
// with requests. Faults apply to every action unless FaultOnly narrows them.

// SetLatency delays every response by d.
func (s *STS) SetLatency(d time.Duration) { s.mu.Lock(); s.latency = d; s.mu.Unlock() }

// ThrottleNext answers the next n calls with Throttling (400).
func (s *STS) ThrottleNext(n int) { s.mu.Lock(); s.throttleN = n; s.mu.Unlock() }

// SetThrottleFraction throttles a random fraction p (0..1) of calls.
func (s *STS) SetThrottleFraction(p float64) { s.mu.Lock(); s.throttleP = p; s.mu.Unlock() }

// FailNext answers the next n calls with InternalFailure (500).
func (s *STS) FailNext(n int) { s.mu.Lock(); s.failN = n; s.mu.Unlock() }

// SetFailAll answers every call with InternalFailure (500) while on.
func (s *STS) SetFailAll(on bool) { s.mu.Lock(); s.failAll = on; s.mu.Unlock() }

// FaultOnly limits injected faults to one action ("" for all).
func (s *STS) FaultOnly(action string) { s.mu.Lock(); s.faultAction = action; s.mu.Unlock() }

// Calls returns how many requests named action were received (including
// failed ones).
func (s *STS) Calls(action string) int { s.mu.Lock(); defer s.mu.Unlock(); return s.calls[action] }

// RoleCalls returns how many AssumeRole requests targeted roleARN.
func (s *STS) RoleCalls(roleARN string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.roleCalls[roleARN]
}

// Errors returns how many error responses carried code ("" for all codes).
func (s *STS) Errors(code string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if code != "" {
		return s.errs[code]
	}
	n := 0
	for _, v := range s.errs {
		n += v
	}
	return n
}

// stsError is an AWS query-protocol error.
type stsError struct {
	status int
	typ    string // Sender or Receiver
	code   string
	msg    string
}

func (e *stsError) Error() string { return e.code + ": " + e.msg }

func senderErr(status int, code, format string, args ...any) *stsError {
	return &stsError{status: status, typ: "Sender", code: code, msg: fmt.Sprintf(format, args...)}
}

var sessionNameRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

// ServeHTTP implements the query protocol: POST form (or GET query) with
// Action and Version.
func (s *STS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	reqID := newRequestID()
	body, err := io.ReadAll(io.LimitReader(r.Body, stsMaxBody+1))
	if err != nil || len(body) > stsMaxBody {
		s.writeError(w, reqID, "", senderErr(400, "ValidationError", "request body unreadable or too large"))
		return
	}
	var form url.Values
	switch r.Method {
	case http.MethodPost:
		form, err = url.ParseQuery(string(body))
		if err != nil {
			s.writeError(w, reqID, "", senderErr(400, "ValidationError", "malformed form body"))
			return
		}
	case http.MethodGet:
		form = r.URL.Query()
	default:
		s.writeError(w, reqID, "", senderErr(405, "InvalidAction", "method %s not allowed", r.Method))
		return
	}
	action := form.Get("Action")
	s.mu.Lock()
	s.calls[action]++
	if action == ActionAssumeRole {
		s.roleCalls[form.Get("RoleArn")]++
	}
	s.mu.Unlock()

	if ferr := s.injectFault(r.Context(), action); ferr != nil {
		s.writeError(w, reqID, action, ferr)
		return
	}
	if form.Get("Version") != stsVersion {
		s.writeError(w, reqID, action, senderErr(400, "InvalidParameterValue", "unsupported Version %q", form.Get("Version")))
		return
	}
	caller, serr := s.authenticate(r, body)
	if serr != nil {
		s.writeError(w, reqID, action, serr)
		return
	}
	var resp any
	switch action {
	case ActionAssumeRole:
		resp, serr = s.assumeRole(caller, form, reqID)
	case ActionGetCallerIdentity:
		resp = s.getCallerIdentity(caller, reqID)
	default:
		serr = senderErr(400, "InvalidAction", "could not find operation %q for version %s", action, stsVersion)
	}
	if serr != nil {
		s.writeError(w, reqID, action, serr)
		return
	}
	writeXML(w, http.StatusOK, reqID, resp)
}

func (s *STS) injectFault(ctx context.Context, action string) *stsError {
	s.mu.Lock()
	lat := s.latency
	var fe *stsError
	if s.faultAction == "" || s.faultAction == action {
		switch {
		case s.failAll:
			fe = &stsError{status: 500, typ: "Receiver", code: "InternalFailure", msg: "injected failure (fail-all)"}
		case s.failN > 0:
			s.failN--
			fe = &stsError{status: 500, typ: "Receiver", code: "InternalFailure", msg: "injected failure"}
		case s.throttleN > 0:
			s.throttleN--
			fe = senderErr(400, "Throttling", "Rate exceeded")
		case s.throttleP > 0 && rand.Float64() < s.throttleP:
			fe = senderErr(400, "Throttling", "Rate exceeded")
		}
	}
	s.mu.Unlock()
	if lat > 0 {
		t := time.NewTimer(lat)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	return fe
}

// authenticate verifies the SigV4 signature and returns the caller's
// issued credentials.
func (s *STS) authenticate(r *http.Request, body []byte) (Issued, *stsError) {
	auth, err := ParseSigV4(r)
	switch {
	case errors.Is(err, ErrMissingAuth):
		return Issued{}, senderErr(403, "MissingAuthenticationToken", "Request is missing Authentication Token")
	case err != nil:
		return Issued{}, senderErr(400, "IncompleteSignature", "%v", err)
	}
	now := s.store.Now()
	if err := auth.CheckScope("sts", s.cfg.Region, now, s.cfg.MaxSkew); err != nil {
		if errors.Is(err, ErrClockSkew) {
			return Issued{}, senderErr(403, "SignatureDoesNotMatch", "Signature expired: %v", err)
		}
		return Issued{}, senderErr(403, "SignatureDoesNotMatch", "Credential should be scoped to a valid region and service: %v", err)
	}
	is, ok := s.store.Lookup(auth.AccessKeyID)
	if !ok {
		return Issued{}, senderErr(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
	}
	if tok := r.Header.Get("X-Amz-Security-Token"); tok != is.SessionToken {
		return Issued{}, senderErr(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
	}
	if !signedHeader(auth, "x-amz-security-token") {
		return Issued{}, senderErr(400, "IncompleteSignature", "x-amz-security-token must be signed")
	}
	if err := auth.Verify(r, body, is.SecretAccessKey); err != nil {
		return Issued{}, senderErr(403, "SignatureDoesNotMatch",
			"The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")
	}
	if !now.Before(is.Expiration) {
		return Issued{}, senderErr(400, "ExpiredToken", "The security token included in the request is expired")
	}
	return is, nil
}

func signedHeader(a *SigV4Auth, h string) bool {
	for _, s := range a.SignedHeaders {
		if s == h {
			return true
		}
	}
	return false
}

type assumeRoleResponse struct {
	XMLName xml.Name `xml:"AssumeRoleResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Result  struct {
		AssumedRoleUser struct {
			Arn           string `xml:"Arn"`
			AssumedRoleID string `xml:"AssumedRoleId"`
		} `xml:"AssumedRoleUser"`
		Credentials struct {
			AccessKeyID     string `xml:"AccessKeyId"`
			SecretAccessKey string `xml:"SecretAccessKey"`
			SessionToken    string `xml:"SessionToken"`
			Expiration      string `xml:"Expiration"`
		} `xml:"Credentials"`
		PackedPolicySize *int `xml:"PackedPolicySize,omitempty"`
	} `xml:"AssumeRoleResult"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

type responseMetadata struct {
	RequestID string `xml:"RequestId"`
}

type getCallerIdentityResponse struct {
	XMLName xml.Name `xml:"GetCallerIdentityResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Result  struct {
		Arn     string `xml:"Arn"`
		UserID  string `xml:"UserId"`
		Account string `xml:"Account"`
	} `xml:"GetCallerIdentityResult"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

type errorResponse struct {
	XMLName xml.Name `xml:"ErrorResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Error   struct {
		Type    string `xml:"Type"`
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	} `xml:"Error"`
	RequestID string `xml:"RequestId"`
}

func (s *STS) assumeRole(caller Issued, form url.Values, reqID string) (any, *stsError) {
	roleARN := form.Get("RoleArn")
	session := form.Get("RoleSessionName")
	account, roleName, ok := splitRoleARN(roleARN)
	if !ok {
		return nil, senderErr(400, "ValidationError", "%s is invalid", roleARN)
	}
	if !sessionNameRE.MatchString(session) {
		return nil, senderErr(400, "ValidationError",
			"1 validation error detected: Value '%s' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]* and length 2..64", session)
	}
	dur := time.Hour
	if v := form.Get("DurationSeconds"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 900 || n > 43200 {
			return nil, senderErr(400, "ValidationError",
				"1 validation error detected: Value '%s' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200", v)
		}
		dur = time.Duration(n) * time.Second
	}
	if !s.trusted(caller.RoleARN, roleARN) {
		return nil, senderErr(403, "AccessDenied",
			"User: %s is not authorized to perform: sts:AssumeRole on resource: %s", caller.PrincipalARN, roleARN)
	}
	pol := s.cfg.Roles[roleARN]
	if pol.ExternalID != "" && form.Get("ExternalId") != pol.ExternalID {
		return nil, senderErr(403, "AccessDenied",
			"User: %s is not authorized to perform: sts:AssumeRole on resource: %s", caller.PrincipalARN, roleARN)
	}
	if caller.Chained && dur > time.Hour {
		return nil, senderErr(400, "ValidationError",
			"The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.")
	}
	maxDur := pol.MaxSessionDuration
	if maxDur == 0 {
		maxDur = time.Hour
	}
	if dur > maxDur {
		return nil, senderErr(400, "ValidationError",
			"The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")
	}
	principal := "arn:" + partitionOf(roleARN) + ":sts::" + account + ":assumed-role/" + roleName + "/" + session
	if s.cfg.IssueLifetime > 0 {
		dur = s.cfg.IssueLifetime
	}
	is := s.store.Issue(account, roleARN, principal, dur, true)

	var resp assumeRoleResponse
	resp.Xmlns = stsNamespace
	resp.Result.AssumedRoleUser.Arn = principal
	resp.Result.AssumedRoleUser.AssumedRoleID = RoleID(roleARN) + ":" + session
	resp.Result.Credentials.AccessKeyID = is.AccessKeyID
	resp.Result.Credentials.SecretAccessKey = is.SecretAccessKey
	resp.Result.Credentials.SessionToken = is.SessionToken
	resp.Result.Credentials.Expiration = is.Expiration.UTC().Format(time.RFC3339)
	resp.Metadata.RequestID = reqID
	return &resp, nil
}

func (s *STS) getCallerIdentity(caller Issued, reqID string) any {
	var resp getCallerIdentityResponse
	resp.Xmlns = stsNamespace
	resp.Result.Arn = caller.PrincipalARN
	resp.Result.Account = caller.Account
	session := caller.PrincipalARN[strings.LastIndexByte(caller.PrincipalARN, '/')+1:]
	resp.Result.UserID = RoleID(caller.RoleARN) + ":" + session
	resp.Metadata.RequestID = reqID
	return &resp
}

func (s *STS) trusted(principal, role string) bool {
	for _, t := range s.cfg.Trust {
		if globMatch(t.Principal, principal) && globMatch(t.Role, role) {
			return true
		}
	}
	return false
}

func (s *STS) writeError(w http.ResponseWriter, reqID, action string, e *stsError) {
	s.mu.Lock()
	s.errs[e.code]++
	s.mu.Unlock()
	var doc errorResponse
	doc.Xmlns = stsNamespace
	doc.Error.Type = e.typ
	doc.Error.Code = e.code
	doc.Error.Message = e.msg
	doc.RequestID = reqID
	writeXML(w, e.status, reqID, &doc)
}

func writeXML(w http.ResponseWriter, status int, reqID string, v any) {
	b, err := xml.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", reqID)
	w.Header().Set("Content-Length", strconv.Itoa(len(xml.Header)+len(b)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, xml.Header)
	_, _ = w.Write(b)
}

// splitRoleARN splits arn:<partition>:iam::<account>:role/<path/>name.
func splitRoleARN(arn string) (account, name string, ok bool) {
	f := strings.SplitN(arn, ":", 6)
	if len(f) != 6 || f[0] != "arn" || f[1] == "" || f[2] != "iam" || f[3] != "" {
		return "", "", false
	}
	if len(f[4]) != 12 || strings.Trim(f[4], "0123456789") != "" {
		return "", "", false
	}
	res, ok := strings.CutPrefix(f[5], "role/")
	if !ok || res == "" || strings.HasSuffix(res, "/") {
		return "", "", false
	}
	return f[4], res[strings.LastIndexByte(res, '/')+1:], true
}

func partitionOf(arn string) string {
	f := strings.SplitN(arn, ":", 3)
	if len(f) < 2 || f[1] == "" {
		return "aws"
	}
	return f[1]
}

// RoleID returns the stable fake unique id (AROA...) of a role ARN.
func RoleID(roleARN string) string {
	sum := sha256.Sum256([]byte(roleARN))
	return "AROA" + base32.StdEncoding.EncodeToString(sum[:])[:17]
}

// globMatch matches s against pattern where '*' is any run of characters
// (slashes included, unlike path.Match) and '?' is one character.
func globMatch(pattern, s string) bool {
	px, sx := 0, 0
	starP, starS := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pattern) && (pattern[px] == '?' || pattern[px] == s[sx]):
			px++
			sx++
		case px < len(pattern) && pattern[px] == '*':
			starP, starS = px, sx
			px++
		case starP >= 0:
			px = starP + 1
			starS++
			sx = starS
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}

func newRequestID() string {
	var b [16]byte
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
