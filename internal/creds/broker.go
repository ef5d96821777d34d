package creds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

const (
	// DefaultUpstream is where `aws_signing_helper serve` listens.
	DefaultUpstream = "http://127.0.0.1:9911"
	// MaxChainedSession is STS's limit for sessions assumed with role
	// session credentials (role chaining).
	MaxChainedSession = time.Hour
	// MinSession is the shortest session STS grants.
	MinSession = 15 * time.Minute
	// minServe is the least lifetime a credential handed out may have.
	minServe = time.Minute
	// handoutTarget is the lifetime we try to hand out: Java SDKs refresh
	// IMDS credentials inside their last 15 minutes.
	handoutTarget = 15 * time.Minute
	// baseRefreshBefore re-fetches base credentials this long before they
	// expire. aws_signing_helper itself renews under 10 minutes and EC2 at
	// least 5 minutes ahead, so a fetch inside this window gets new keys.
	baseRefreshBefore = 5 * time.Minute
	// retryAfter spaces out attempts after a failure (or after upstream
	// handed back credentials already inside the refresh window), so an
	// outage does not put an STS/upstream round trip on every request.
	retryAfter = 10 * time.Second
)

// Config configures the broker. Zero values take the defaults noted.
type Config struct {
	// Upstream is the IMDSv2 endpoint of the base credentials (default
	// DefaultUpstream; EC2 IMDS works the same way).
	Upstream *url.URL
	// Region of the STS client (default us-east-1).
	Region string
	// STSEndpoint overrides the STS endpoint (tests, VPC endpoints).
	STSEndpoint string
	// SessionDuration of assumed roles (default and maximum 1h: the base
	// credentials are a role session, so AssumeRole is role chaining).
	SessionDuration time.Duration
	// RefreshBefore starts the background refresh this long (plus up to a
	// quarter more of jitter) before expiry. Default: a third of the session,
	// between 5m and 20m — 20m for 1h sessions, so a healthy broker never
	// hands out credentials with less than 15m left, and a failing STS has
	// 20 minutes of retries before anyone sees an error.
	RefreshBefore time.Duration
	// RefreshInterval is how often Run scans for due refreshes (default 10s).
	RefreshInterval time.Duration
	// RefreshRate bounds background STS refreshes per second (default 10).
	RefreshRate float64
	// CacheSize bounds cached sessions (default 4096, least recently used
	// evicted).
	CacheSize int
	// UpstreamTimeout bounds one upstream HTTP request (default 2s).
	UpstreamTimeout time.Duration
	// STSTimeout bounds one STS operation, retries included (default 5s).
	STSTimeout time.Duration
	// STSMaxAttempts is the SDK's attempts per STS operation (default 2;
	// 1 disables retries). Kept small: SDKs in containers give IMDS about
	// a second, and stale-on-error covers transient failures.
	STSMaxAttempts int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// HTTPClient is used for upstream and STS (default: separate clients
	// that never proxy upstream requests).
	HTTPClient *http.Client
}

func (c *Config) setDefaults() {
	if c.Upstream == nil {
		c.Upstream, _ = url.Parse(DefaultUpstream)
	}
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	if c.SessionDuration == 0 {
		c.SessionDuration = time.Hour
	}
	if c.RefreshBefore == 0 {
		c.RefreshBefore = min(max(c.SessionDuration/3, 5*time.Minute), 20*time.Minute)
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = 10 * time.Second
	}
	if c.RefreshRate == 0 {
		c.RefreshRate = 10
	}
	if c.CacheSize == 0 {
		c.CacheSize = 4096
	}
	if c.UpstreamTimeout == 0 {
		c.UpstreamTimeout = 2 * time.Second
	}
	if c.STSTimeout == 0 {
		c.STSTimeout = 5 * time.Second
	}
	if c.STSMaxAttempts == 0 {
		c.STSMaxAttempts = 2
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports configuration errors (after defaults are applied).
func (c Config) Validate() error {
	c.setDefaults()
	switch {
	case c.Upstream.Scheme != "http" && c.Upstream.Scheme != "https" || c.Upstream.Host == "":
		return fmt.Errorf("upstream %q: want an http URL with a host", c.Upstream)
	case c.SessionDuration > MaxChainedSession:
		return fmt.Errorf("session duration %v exceeds %v: the base credentials are themselves a role session "+
			"(Roles Anywhere or an instance profile), and STS caps sessions assumed with them (role chaining) at 1 hour",
			c.SessionDuration, MaxChainedSession)
	case c.SessionDuration < MinSession:
		return fmt.Errorf("session duration %v is below the STS minimum of %v", c.SessionDuration, MinSession)
	case c.SessionDuration%time.Second != 0:
		return fmt.Errorf("session duration %v: want whole seconds", c.SessionDuration)
	case c.RefreshBefore < 5*time.Minute:
		return fmt.Errorf("refresh-before %v: want at least 5m, so a failing STS has time to recover", c.RefreshBefore)
	case c.RefreshBefore > c.SessionDuration-5*time.Minute:
		return fmt.Errorf("refresh-before %v: want at most session duration %v minus 5m", c.RefreshBefore, c.SessionDuration)
	case c.CacheSize < 1:
		return fmt.Errorf("cache size %d: want at least 1", c.CacheSize)
	case c.RefreshRate < 0 || c.RefreshInterval < 0 || c.UpstreamTimeout < 0 || c.STSTimeout < 0 || c.STSMaxAttempts < 0:
		return errors.New("refresh rate, intervals, timeouts and attempts must not be negative")
	case c.STSEndpoint != "":
		if u, err := url.Parse(c.STSEndpoint); err != nil || u.Host == "" {
			return fmt.Errorf("sts endpoint %q: want an absolute URL", c.STSEndpoint)
		}
	}
	return nil
}

// Identity describes the base credentials, from STS GetCallerIdentity.
type Identity struct {
	Account   string
	Partition string
	ARN       string // caller ARN, e.g. arn:aws:sts::1:assumed-role/base/session
	RoleName  string
	RoleARN   string // arn:<partition>:iam::<account>:role/<name> (path not known)
}

// AssumeError is a failed AssumeRole; errors.Is(err, ErrSTS) holds.
type AssumeError struct {
	RoleARN string
	Code    string // AWS error code, or "Timeout" / "Transport" / "" (bad answer)
	Err     error
}

func (e *AssumeError) Error() string {
	var ae smithy.APIError
	if errors.As(e.Err, &ae) {
		return fmt.Sprintf("assume role %s: %v: %s: %s", e.RoleARN, ErrSTS, ae.ErrorCode(), ae.ErrorMessage())
	}
	return fmt.Sprintf("assume role %s: %v: %v", e.RoleARN, ErrSTS, e.Err)
}

// Unwrap exposes ErrSTS and the cause.
func (e *AssumeError) Unwrap() []error { return []error{ErrSTS, e.Err} }

// Broker hands out assumed-role credentials, cached and refreshed ahead of
// expiry. Safe for concurrent use.
type Broker struct {
	cfg Config
	log *zap.Logger
	m   *metrics
	up  *upstream
	sts *sts.Client

	cache   *lru
	flights singleflight.Group
	limiter *bucket

	baseMu      sync.Mutex
	base        *Credentials
	baseRole    string // upstream role name
	baseTriedAt time.Time
	ident       *Identity
	identFailAt time.Time // last failed GetCallerIdentity, for backoff

	bgCtx    context.Context
	bgCancel context.CancelFunc
	goMu     sync.Mutex
	closed   bool
	wg       sync.WaitGroup
	prefetch chan struct{} // bounds concurrent prefetches
	workers  chan struct{} // bounds concurrent background refreshes
}

// New builds a broker; it does not contact upstream or STS.
func New(cfg Config, log *zap.Logger, reg prometheus.Registerer) (*Broker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("credential broker config: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	b := &Broker{
		cfg:      cfg,
		log:      log,
		cache:    newLRU(cfg.CacheSize),
		limiter:  newBucket(cfg.RefreshRate, max(2*cfg.RefreshRate, 1)),
		prefetch: make(chan struct{}, 16),
		workers:  make(chan struct{}, 4),
	}
	m, err := newMetrics(reg, func() float64 { return float64(b.cache.len()) })
	if err != nil {
		return nil, err
	}
	b.m = m
	b.bgCtx, b.bgCancel = context.WithCancel(context.Background())

	upClient, stsClient := cfg.HTTPClient, cfg.HTTPClient
	if upClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil // the upstream is local (or link-local on EC2): never proxy it
		upClient = &http.Client{
			Transport: t,
			// IMDS never redirects; following one could leak our token.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		stsClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	b.up = &upstream{base: cfg.Upstream, client: upClient, now: cfg.Now, timeout: cfg.UpstreamTimeout}

	opts := sts.Options{
		Region:      cfg.Region,
		Credentials: baseProvider{b},
		HTTPClient:  stsClient,
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = cfg.STSMaxAttempts
			o.MaxBackoff = 200 * time.Millisecond
			o.RateLimiter = ratelimit.None
		}),
	}
	if cfg.STSEndpoint != "" {
		opts.BaseEndpoint = aws.String(cfg.STSEndpoint)
	}
	b.sts = sts.New(opts)
	return b, nil
}

// Run refreshes cached sessions in the background until ctx is done, then
// waits for the goroutines it and Prefetch started. It returns nil on a
// clean stop.
func (b *Broker) Run(ctx context.Context) error {
	defer b.stop()
	if _, err := b.Identity(ctx); err != nil && ctx.Err() == nil {
		b.log.Warn("base identity not resolved yet", zap.Error(err))
	}
	t := time.NewTicker(b.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			b.refreshDue()
		}
	}
}

// Close stops background work (refreshes, prefetches) and waits for it.
// Run calls it on return; it is idempotent. Get keeps working afterwards,
// without background refresh.
func (b *Broker) Close() { b.stop() }

func (b *Broker) stop() {
	b.goMu.Lock()
	b.closed = true
	b.goMu.Unlock()
	b.bgCancel()
	b.wg.Wait()
}

// spawn runs f in a goroutine owned by the broker, unless it has stopped.
func (b *Broker) spawn(f func()) bool {
	b.goMu.Lock()
	defer b.goMu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
	return true
}

// refreshDue starts background refreshes of recently used sessions whose
// refresh time has come, within the rate limit.
func (b *Broker) refreshDue() {
	now := b.cfg.Now()
	for _, k := range b.cache.due(now, now.Add(-b.cfg.SessionDuration)) {
		if !b.limiter.allow() {
			return // the rest stay due for the next tick
		}
		if !b.cache.claim(k) {
			continue
		}
		b.refreshAsync(k, true)
	}
}

// refreshAsync refreshes a claimed entry in the background. With wait, it
// queues for a worker slot; otherwise it gives up when all are busy.
func (b *Broker) refreshAsync(k cacheKey, wait bool) {
	started := b.spawn(func() {
		select {
		case b.workers <- struct{}{}:
		case <-b.bgCtx.Done():
			b.cache.unclaim(k)
			return
		default:
			if !wait {
				b.cache.unclaim(k)
				return
			}
			select {
			case b.workers <- struct{}{}:
			case <-b.bgCtx.Done():
				b.cache.unclaim(k)
				return
			}
		}
		defer func() { <-b.workers }()
		defer b.cache.unclaim(k)
		if _, err := b.fetch(b.bgCtx, k); err != nil {
			b.m.refreshes.WithLabelValues("error").Inc()
			b.log.Warn("background credential refresh failed", zap.String("role_arn", k.RoleARN), zap.Error(err))
			return
		}
		b.m.refreshes.WithLabelValues("ok").Inc()
	})
	if !started {
		b.cache.unclaim(k)
	}
}

// Get returns credentials for req, from the cache when fresh. hit reports
// that no STS call was waited for. The result always has at least a
// minute left; errors wrap ErrSTS or ErrUpstream.
func (b *Broker) Get(ctx context.Context, req Request) (*Credentials, bool, error) {
	if req.RoleARN == "" || req.SessionName == "" {
		return nil, false, fmt.Errorf("get credentials: %w: role ARN and session name are required", ErrSTS)
	}
	k := cacheKey(req)
	now := b.cfg.Now()
	snap, ok := b.cache.get(k, now)
	// Every cached answer below has at least minServe left, whatever the
	// credential's lifetime or where its refresh time fell.
	if ok && usable(snap.creds, now) {
		c := snap.creds
		left := c.Expiration.Sub(now)
		switch {
		case now.Before(snap.refreshAt):
			b.m.hits.Inc()
			return c, true, nil
		case left > b.syncBelow(c):
			// Due but comfortably valid: answer now, refresh behind.
			if !snap.refreshing && b.cache.claim(k) {
				if b.limiter.allow() {
					b.refreshAsync(k, false)
				} else {
					b.cache.unclaim(k)
				}
			}
			b.m.hits.Inc()
			return c, true, nil
		case now.Before(snap.nextTry):
			// A refresh just failed: do not stall every request on STS.
			b.m.hits.Inc()
			b.m.stale.Inc()
			return c, true, nil
		}
	}
	b.m.misses.Inc()
	c, err := b.fetch(ctx, k)
	now = b.cfg.Now()
	if err == nil && usable(c, now) {
		return c, false, nil
	}
	if err == nil {
		err = &AssumeError{RoleARN: req.RoleARN, Err: errors.New("credentials returned by STS expire too soon")}
	}
	if snap, ok := b.cache.peek(k); ok && usable(snap.creds, now) {
		b.m.stale.Inc()
		b.log.Warn("serving cached credentials after refresh failure",
			zap.String("role_arn", req.RoleARN), zap.Duration("duration", snap.creds.Expiration.Sub(now)), zap.Error(err))
		return snap.creds, true, nil
	}
	return nil, false, err
}

// syncBelow is the remaining lifetime of c under which Get refreshes
// synchronously: 15m for default 1h sessions, less for short ones (and
// for short-lived test credentials) so they still refresh behind answers.
func (b *Broker) syncBelow(c *Credentials) time.Duration {
	d := min(handoutTarget, b.cfg.RefreshBefore*3/4)
	if life := c.Expiration.Sub(c.LastUpdated); life > 0 {
		d = min(d, life/4)
	}
	return d
}

// fresh reports whether a cached entry needs no refresh yet.
func (b *Broker) fresh(s snapshot) bool {
	now := b.cfg.Now()
	return now.Before(s.refreshAt) && usable(s.creds, now)
}

func usable(c *Credentials, now time.Time) bool {
	return c.Valid(now) && c.Expiration.Sub(now) >= minServe
}

// Prefetch warms the cache for req in the background (a labelled
// container started). It never blocks; when many prefetches are already
// running the request is dropped, and Get will fetch on demand.
func (b *Broker) Prefetch(req Request) {
	if req.RoleARN == "" || req.SessionName == "" {
		return
	}
	k := cacheKey(req)
	if snap, ok := b.cache.peek(k); ok && b.fresh(snap) {
		return
	}
	select {
	case b.prefetch <- struct{}{}:
	default:
		b.log.Debug("prefetch dropped: too many in flight", zap.String("role_arn", req.RoleARN))
		return
	}
	if !b.spawn(func() {
		defer func() { <-b.prefetch }()
		if _, err := b.fetch(b.bgCtx, k); err != nil {
			b.log.Warn("credential prefetch failed", zap.String("role_arn", req.RoleARN), zap.Error(err))
		}
	}) {
		<-b.prefetch
	}
}

// fetch assumes the role for k, sharing one STS call among concurrent
// callers. The call runs detached from ctx so a caller giving up does not
// fail it for the others.
func (b *Broker) fetch(ctx context.Context, k cacheKey) (*Credentials, error) {
	parent := b.detach(ctx)
	ch := b.flights.DoChan(k.flightKey(), func() (any, error) {
		// A flight that finished just before this one may already have
		// stored fresh credentials.
		if snap, ok := b.cache.peek(k); ok && b.fresh(snap) {
			return snap.creds, nil
		}
		return b.assume(parent, k)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Credentials), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("assume role %s: %w: %w", k.RoleARN, ErrSTS, ctx.Err())
	}
}

// detach returns the parent context of a shared flight started by a
// caller with ctx: background work stops with the broker, a request's
// flight outlives that request (other callers may be waiting on it) but
// not its own timeout.
func (b *Broker) detach(ctx context.Context) context.Context {
	if ctx == b.bgCtx {
		return ctx
	}
	return context.WithoutCancel(ctx)
}

func (b *Broker) assume(parent context.Context, k cacheKey) (*Credentials, error) {
	ctx, cancel := context.WithTimeout(parent, b.cfg.STSTimeout)
	defer cancel()
	if _, err := b.baseCreds(ctx); err != nil {
		b.cache.fail(k, b.cfg.Now().Add(retryAfter))
		return nil, fmt.Errorf("assume role %s: %w", k.RoleARN, err)
	}
	in := &sts.AssumeRoleInput{
		RoleArn:         aws.String(k.RoleARN),
		RoleSessionName: aws.String(k.SessionName),
		DurationSeconds: aws.Int32(int32(b.cfg.SessionDuration / time.Second)),
	}
	if k.ExternalID != "" {
		in.ExternalId = aws.String(k.ExternalID)
	}
	start := time.Now()
	b.m.stsCalls.WithLabelValues("AssumeRole").Inc()
	out, err := b.sts.AssumeRole(ctx, in)
	if err == nil {
		err = validateSTSCreds(out.Credentials, b.cfg.Now())
	}
	if err != nil {
		code := errorCode(err)
		b.m.stsErrors.WithLabelValues("AssumeRole", code).Inc()
		b.cache.fail(k, b.cfg.Now().Add(retryAfter))
		return nil, &AssumeError{RoleARN: k.RoleARN, Code: code, Err: err}
	}
	now := b.cfg.Now()
	c := &Credentials{
		AccessKeyID:     aws.ToString(out.Credentials.AccessKeyId),
		SecretAccessKey: aws.ToString(out.Credentials.SecretAccessKey),
		SessionToken:    aws.ToString(out.Credentials.SessionToken),
		Expiration:      out.Credentials.Expiration.UTC(),
		LastUpdated:     now.UTC(),
		AccountID:       accountOf(k.RoleARN),
		RoleARN:         k.RoleARN,
	}
	if out.AssumedRoleUser != nil {
		if acct := accountOf(aws.ToString(out.AssumedRoleUser.Arn)); acct != "" {
			c.AccountID = acct
		}
	}
	if n := b.cache.put(k, c, b.refreshAt(c, now), now); n > 0 {
		b.m.evictions.Add(float64(n))
	}
	b.log.Debug("assumed role", zap.String("role_arn", k.RoleARN),
		zap.Duration("duration", time.Since(start)), zap.String("key_hash", shortHash(c.AccessKeyID)))
	return c, nil
}

// refreshAt picks when c becomes due: RefreshBefore plus up to a quarter
// more of jitter ahead of expiry, so sessions fetched together do not
// refresh together; never earlier than halfway through its life.
func (b *Broker) refreshAt(c *Credentials, now time.Time) time.Time {
	jitter := time.Duration(rand.Int64N(int64(b.cfg.RefreshBefore/4) + 1))
	at := c.Expiration.Add(-b.cfg.RefreshBefore - jitter)
	if half := now.Add(c.Expiration.Sub(now) / 2); at.Before(half) {
		at = half
	}
	return at
}

// validateSTSCreds rejects incomplete or already expired STS answers.
func validateSTSCreds(c *ststypes.Credentials, now time.Time) error {
	switch {
	case c == nil || aws.ToString(c.AccessKeyId) == "" || aws.ToString(c.SecretAccessKey) == "" || aws.ToString(c.SessionToken) == "":
		return errors.New("response carries incomplete credentials")
	case c.Expiration == nil || !c.Expiration.After(now):
		return errors.New("response carries expired credentials")
	}
	return nil
}

func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "Timeout"
	}
	return "Transport"
}

// accountOf extracts the account field of an ARN.
func accountOf(arn string) string {
	f := strings.SplitN(arn, ":", 6)
	if len(f) < 6 || f[0] != "arn" {
		return ""
	}
	return f[4]
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}
