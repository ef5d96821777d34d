package imds

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/per-docker-roles/per-docker-roles/internal/creds"
	"github.com/per-docker-roles/per-docker-roles/internal/identity"
	"github.com/per-docker-roles/per-docker-roles/internal/roles"
	"github.com/per-docker-roles/per-docker-roles/internal/token"
)

// Header names as net/http canonicalizes them (SDKs send them in other
// cases; lookups are case-insensitive).
const (
	headerToken = "X-Aws-Ec2-Metadata-Token"
	headerTTL   = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	headerXFF   = "X-Forwarded-For"
)

// Bodies of refusals: short, fixed, and the same whatever the reason, so a
// caller learns nothing about other callers; the log line says why.
var (
	bodyBadTTL       = []byte("missing or invalid X-aws-ec2-metadata-token-ttl-seconds: want 1..21600\n")
	bodyUnauthorized = []byte("Unauthorized\n")
	bodyForbidden    = []byte("Forbidden\n")
	bodyNotFound     = []byte("Not Found\n")
	bodyMethod       = []byte("Method Not Allowed\n")
	bodyInternal     = []byte("Internal Server Error\n")
	bodyNotIdent     = []byte("caller not identified yet, retry\n")
	bodyNoBase       = []byte("base role not known yet, retry\n")
	bodyUpstream     = []byte("upstream credentials unavailable\n")
	bodySTS          = []byte("assume role failed\n")
	bodyBadCreds     = []byte("credentials unavailable\n")
)

// errNotValid marks broker credentials that are empty or already expired.
var errNotValid = errors.New("broker returned empty or expired credentials")

// statusWriter captures the status for logs and metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// exchange is one request's state, shared by the wrapper and the handlers.
type exchange struct {
	w     statusWriter
	r     *http.Request
	route route
	st    *connState // set once identified

	tok     string // token presented or minted; logged as a short hash only
	roleARN string // role the caller resolved to

	level  zapcore.Level // of the request log line; raised by note
	reason string
	fields []zap.Field
}

// note records why a request ended the way it did, for the log line.
func (x *exchange) note(level zapcore.Level, reason string, fields ...zap.Field) {
	if level > x.level {
		x.level = level
	}
	x.reason = reason
	x.fields = append(x.fields, fields...)
}

func (x *exchange) reply(code int, body []byte) {
	h := x.w.Header()
	// EC2 serves every IMDS document, the JSON ones included, as
	// text/plain; the SDKs parse the body whatever the type.
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	x.w.WriteHeader(code)
	_, _ = x.w.Write(body)
}

// ServeHTTP is the one wrapper every route goes through: panic recovery,
// status capture, metrics and the request log line.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	x := &exchange{w: statusWriter{ResponseWriter: w}, r: r, route: parseRoute(r.URL.Path), level: zapcore.DebugLevel}
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p) // net/http's own way to abort a response
			}
			x.note(zapcore.ErrorLevel, "handler panic", zap.Any("panic", p), zap.Stack("stack"))
			if x.w.status == 0 {
				x.reply(http.StatusInternalServerError, bodyInternal)
			}
		}
		s.finish(x, time.Since(start))
	}()
	s.handle(x)
}

func (s *Server) finish(x *exchange, d time.Duration) {
	status := x.w.status
	if status == 0 {
		status = http.StatusOK
	}
	s.metrics.requests.WithLabelValues(x.route.name(), statusLabel(status)).Inc()
	ce := s.log.Check(x.level, "imds request")
	if ce == nil {
		return
	}
	path := x.r.URL.Path
	if len(path) > 256 {
		path = path[:256] + "…"
	}
	fields := append(x.callerFields(),
		zap.String("method", x.r.Method),
		zap.String("path", path),
		zap.String("route", x.route.name()),
		zap.Int("status", status),
		zap.Duration("duration", d),
	)
	if x.reason != "" {
		fields = append(fields, zap.String("reason", x.reason))
	}
	if x.tok != "" {
		fields = append(fields, zap.String("token", token.ShortHash(x.tok)))
	}
	if x.roleARN != "" {
		fields = append(fields, zap.String("role_arn", x.roleARN))
	}
	ce.Write(append(fields, x.fields...)...)
}

// callerFields are the stable caller fields of log lines.
func (x *exchange) callerFields() []zap.Field {
	if x.st == nil {
		return []zap.Field{zap.String("peer", x.r.RemoteAddr)}
	}
	f := []zap.Field{zap.Stringer("peer", x.st.peer)}
	c := x.st.caller
	if x.st.err == nil {
		f = append(f, zap.Stringer("caller_kind", c.Kind))
	}
	if c.Kind == identity.KindContainer {
		f = append(f, zap.String("container", c.Container.Name), zap.String("container_id", c.Container.ID))
	}
	if c.CgroupID != 0 {
		f = append(f, zap.Uint64("cgroup_id", c.CgroupID))
	}
	return f
}

func (s *Server) handle(x *exchange) {
	r := x.r
	// EC2 refuses anything that looks proxied: an SDK never sends XFF, a
	// misconfigured reverse proxy in a container does.
	if _, ok := r.Header[headerXFF]; ok {
		x.note(zapcore.WarnLevel, "request carries X-Forwarded-For")
		x.reply(http.StatusForbidden, bodyForbidden)
		return
	}
	switch x.route.kind {
	case routeUnknown:
		x.note(zapcore.DebugLevel, "unknown path (never forwarded)")
		x.reply(http.StatusNotFound, bodyNotFound)
		return
	case routeToken:
		if r.Method != http.MethodPut {
			x.w.Header().Set("Allow", http.MethodPut)
			x.reply(http.StatusMethodNotAllowed, bodyMethod)
			return
		}
	default:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			x.w.Header().Set("Allow", "GET, HEAD")
			x.reply(http.StatusMethodNotAllowed, bodyMethod)
			return
		}
	}

	st, err := s.identify(r)
	x.st = st
	switch {
	case errors.Is(err, identity.ErrNoRecord):
		x.note(zapcore.WarnLevel, "connection did not come through the redirect (no redirect record): refused", zap.Error(err))
		x.reply(http.StatusForbidden, bodyForbidden)
		return
	case err != nil:
		// Transient (index not synced, dockerd slow): close the
		// connection so the retry is identified afresh, not from this
		// cached failure.
		x.note(zapcore.WarnLevel, "caller identification failed", zap.Error(err))
		x.w.Header().Set("Connection", "close")
		x.reply(http.StatusServiceUnavailable, bodyNotIdent)
		return
	}

	if x.route.kind == routeToken {
		s.mintToken(x)
		return
	}
	if !s.authorized(x) {
		return
	}
	t, ok := s.target(x)
	if !ok {
		return
	}
	switch x.route.kind {
	case routeRoleList:
		x.reply(http.StatusOK, []byte(t.name))
	case routeCreds:
		if x.route.role != t.name {
			x.note(zapcore.InfoLevel, "asked for a role that is not the caller's", zap.String("role_asked", x.route.role))
			x.reply(http.StatusNotFound, bodyNotFound)
			return
		}
		s.vend(x, t)
	case routeInfo:
		s.info(x, t)
	}
}

func (s *Server) mintToken(x *exchange) {
	ttl, ok := parseTTL(x.r.Header.Get(headerTTL), MaxTokenTTL)
	if !ok {
		x.note(zapcore.InfoLevel, "bad token ttl")
		x.reply(http.StatusBadRequest, bodyBadTTL)
		return
	}
	tok, err := s.tokens.Mint(x.st.caller.Key(), ttl)
	if err != nil {
		x.note(zapcore.ErrorLevel, "mint token", zap.Error(err))
		x.reply(http.StatusInternalServerError, bodyInternal)
		return
	}
	x.tok = tok
	x.w.Header().Set(headerTTL, strconv.Itoa(int(ttl/time.Second)))
	x.reply(http.StatusOK, []byte(tok))
}

// authorized checks the caller's token, answering 401 when it fails.
func (s *Server) authorized(x *exchange) bool {
	tok := x.r.Header.Get(headerToken)
	if tok == "" && s.cfg.IMDSv1 {
		return true
	}
	err := s.tokens.Check(tok, x.st.caller.Key())
	x.tok = tok
	if err == nil {
		return true
	}
	level := zapcore.InfoLevel
	if errors.Is(err, token.ErrForeign) {
		level = zapcore.WarnLevel // a token replayed from another caller
	}
	x.note(level, "token refused", zap.Error(err))
	x.reply(http.StatusUnauthorized, bodyUnauthorized)
	return false
}

// target is the role a caller is served.
type target struct {
	host               bool   // the upstream base role, for a host caller
	name               string // role name (last ARN path element)
	arn                string
	partition, account string
	req                creds.Request
}

// target resolves the caller's role, answering 404/503 when there is
// none to serve.
func (s *Server) target(x *exchange) (target, bool) {
	c := x.st.caller
	switch c.Kind {
	case identity.KindContainer:
		base, _, ok := s.base(x)
		if !ok {
			return target{}, false
		}
		role, err := s.policy.Select(c.Container.Labels, base)
		switch {
		case err == nil:
		case errors.Is(err, roles.ErrNoLabel):
			x.note(zapcore.DebugLevel, "container has no role label")
			x.reply(http.StatusNotFound, bodyNotFound)
			return target{}, false
		case errors.Is(err, roles.ErrNotAllowed):
			x.note(zapcore.WarnLevel, "container's role label is outside the allowed-roles policy: not served", zap.Error(err))
			x.reply(http.StatusNotFound, bodyNotFound)
			return target{}, false
		case errors.Is(err, roles.ErrMalformed):
			x.note(zapcore.WarnLevel, "container's role label is malformed: not served", zap.Error(err))
			x.reply(http.StatusNotFound, bodyNotFound)
			return target{}, false
		default:
			x.note(zapcore.ErrorLevel, "select role", zap.Error(err))
			x.reply(http.StatusServiceUnavailable, bodyNoBase)
			return target{}, false
		}
		f := strings.SplitN(role.ARN, ":", 6) // validated by Select
		x.roleARN = role.ARN
		return target{
			name: role.Name, arn: role.ARN, partition: f[1], account: f[4],
			req: creds.Request{
				RoleARN:     role.ARN,
				ExternalID:  role.ExternalID,
				SessionName: roles.SessionName(c.Container.Name, c.Container.ID),
			},
		}, true
	case identity.KindHost:
		if s.cfg.HostCallers != HostBase {
			x.note(zapcore.DebugLevel, "host caller: denied by host-callers policy")
			x.reply(http.StatusNotFound, bodyNotFound)
			return target{}, false
		}
		base, name, ok := s.base(x)
		if !ok {
			return target{}, false
		}
		arn := "arn:" + base.Partition + ":iam::" + base.Account + ":role/" + name
		x.roleARN = arn
		return target{host: true, name: name, arn: arn, partition: base.Partition, account: base.Account}, true
	default:
		x.note(zapcore.DebugLevel, "caller maps to no container")
		x.reply(http.StatusNotFound, bodyNotFound)
		return target{}, false
	}
}

// base asks the broker for the base role, answering 503 when unknown.
func (s *Server) base(x *exchange) (roles.Base, string, bool) {
	arn, err := s.broker.BaseARN(x.r.Context())
	if err == nil {
		// The base ARN changes only when the upstream's role does: parse
		// it once per value, not once per request.
		if p := s.baseParsed.Load(); p != nil && p.arn == arn {
			return p.base, p.name, true
		}
		var b roles.Base
		var name string
		if b, name, err = roles.ParseBaseARN(arn); err == nil {
			s.baseParsed.Store(&parsedBase{arn: arn, base: b, name: name})
			return b, name, true
		}
	}
	x.note(zapcore.WarnLevel, "base role unknown", zap.Error(err))
	x.reply(http.StatusServiceUnavailable, bodyNoBase)
	return roles.Base{}, "", false
}

// parsedBase is the last base ARN seen and what ParseBaseARN made of it.
type parsedBase struct {
	arn  string
	base roles.Base
	name string
}

// vend serves the credential document and writes the audit line.
func (s *Server) vend(x *exchange, t target) {
	start := time.Now()
	var (
		c   *creds.Credentials
		hit bool
		err error
	)
	cache := "base"
	if t.host {
		c, err = s.broker.Base(x.r.Context())
	} else {
		c, hit, err = s.broker.Get(x.r.Context(), t.req)
		cache = "miss"
		if hit {
			cache = "hit"
			s.metrics.cacheHits.Inc()
		} else {
			s.metrics.cacheMisses.Inc()
		}
	}
	if err == nil && !c.Valid(s.now()) {
		err = errNotValid
	}
	d := time.Since(start)
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	s.metrics.vend.WithLabelValues(cache, outcome).Observe(d.Seconds())

	level := zapcore.InfoLevel
	if err != nil {
		level = zapcore.WarnLevel
	}
	if ce := s.log.Check(level, "credential vend"); ce != nil {
		audit := append(x.callerFields(),
			zap.String("role_arn", t.arn),
			zap.String("cache", cache),
			zap.String("outcome", outcome),
			zap.Duration("duration", d),
		)
		if x.tok != "" {
			audit = append(audit, zap.String("token", token.ShortHash(x.tok)))
		}
		if err != nil {
			audit = append(audit, zap.Error(err))
		} else {
			audit = append(audit, zap.Time("expiration", c.Expiration))
		}
		ce.Write(audit...)
	}
	if err != nil {
		x.note(zapcore.WarnLevel, "credentials unavailable")
		switch {
		case errors.Is(err, creds.ErrUpstream):
			x.reply(http.StatusServiceUnavailable, bodyUpstream)
		case errors.Is(err, creds.ErrSTS):
			x.reply(http.StatusServiceUnavailable, bodySTS)
		default:
			x.reply(http.StatusServiceUnavailable, bodyBadCreds)
		}
		return
	}
	x.reply(http.StatusOK, c.IMDSJSON(x.route.extended))
}

// infoDoc is EC2's iam/info document.
type infoDoc struct {
	Code               string `json:"Code"`
	LastUpdated        string `json:"LastUpdated"`
	InstanceProfileArn string `json:"InstanceProfileArn"`
	InstanceProfileID  string `json:"InstanceProfileId"`
}

func (s *Server) info(x *exchange, t target) {
	b, err := json.MarshalIndent(infoDoc{
		Code:               "Success",
		LastUpdated:        s.started.UTC().Format(time.RFC3339),
		InstanceProfileArn: "arn:" + t.partition + ":iam::" + t.account + ":instance-profile/" + t.name,
		InstanceProfileID:  instanceProfileID(t.partition, t.account, t.name),
	}, "", "  ")
	if err != nil {
		x.note(zapcore.ErrorLevel, "marshal iam/info", zap.Error(err))
		x.reply(http.StatusInternalServerError, bodyInternal)
		return
	}
	x.reply(http.StatusOK, b)
}

// instanceProfileID derives a stable, IAM-shaped unique ID ("AIPA" + 17
// characters of [A-Z2-7]) from the role, so iam/info does not change
// between requests or restarts.
func instanceProfileID(partition, account, name string) string {
	h := sha256.Sum256([]byte(partition + ":" + account + ":" + name))
	return "AIPA" + base32.StdEncoding.EncodeToString(h[:])[:17]
}
