package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/per-docker-roles/per-docker-roles/internal/roles"
)

// baseCreds are the upstream's credentials. They stay in memory for the
// STS check and are never printed.
type baseCreds struct {
	role                        string
	accessKeyID, secret, sessTk string
	expiration                  time.Time
}

// Sentinel errors of the upstream conversation.
var (
	// ErrEmptyKeys is a credential document with Code "Success" and empty
	// keys: aws_signing_helper answers that way when its own refresh
	// (CreateSession) failed.
	ErrEmptyKeys = errors.New("credential document has empty keys")
	// ErrExpired is a credential document whose Expiration has passed.
	ErrExpired = errors.New("credentials already expired")
	// ErrStatus is an unexpected HTTP status from the upstream.
	ErrStatus = errors.New("unexpected HTTP status")
)

const (
	tokenPath = "/latest/api/token"
	credsPath = "/latest/meta-data/iam/security-credentials/"
	// doctorTokenTTL is short: the helper keeps at most 256 tokens and
	// evicts the earliest-expiring one when full, so ours goes first.
	doctorTokenTTL = "60"
	maxBody        = 64 << 10
)

// imdsDo performs one request against the upstream and returns the body
// of a 200 answer.
func (s *state) imdsDo(ctx context.Context, method, path string, hdr map[string]string) ([]byte, error) {
	u, err := url.Parse(s.cfg.Upstream)
	if err != nil {
		return nil, fmt.Errorf("--upstream %q: %w", s.cfg.Upstream, err)
	}
	target := u.JoinPath(path)
	if strings.HasSuffix(path, "/") && !strings.HasSuffix(target.Path, "/") {
		target.Path += "/"
	}
	req, err := http.NewRequestWithContext(ctx, method, target.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, target, err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := s.deps.UpstreamClient.Do(req)
	if err != nil {
		return nil, err // a *url.Error: it names the method and URL
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read body: %w", method, target, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %w %d", method, target, ErrStatus, resp.StatusCode)
	}
	return body, nil
}

// fetchBase runs the IMDSv2 conversation the daemon runs: token, role
// list, credentials; and validates what comes back.
func (s *state) fetchBase(ctx context.Context) (*baseCreds, error) {
	tok, err := s.imdsDo(ctx, http.MethodPut, tokenPath, map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": doctorTokenTTL})
	if err != nil {
		return nil, err
	}
	auth := map[string]string{"X-aws-ec2-metadata-token": strings.TrimSpace(string(tok))}
	list, err := s.imdsDo(ctx, http.MethodGet, credsPath, auth)
	if err != nil {
		return nil, err
	}
	role, _, _ := strings.Cut(strings.TrimSpace(string(list)), "\n")
	role = strings.TrimSpace(role)
	if role == "" || strings.ContainsAny(role, "/?#") {
		return nil, fmt.Errorf("GET %s: no usable role name (%q)", credsPath, role)
	}
	body, err := s.imdsDo(ctx, http.MethodGet, credsPath+url.PathEscape(role), auth)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Code            string
		AccessKeyID     string `json:"AccessKeyId"`
		SecretAccessKey string
		Token           string
		Expiration      string
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("role %s: credential document: %w", role, err)
	}
	if doc.Code != "Success" {
		return nil, fmt.Errorf("role %s: credential Code %q", role, doc.Code)
	}
	if doc.AccessKeyID == "" || doc.SecretAccessKey == "" || doc.Token == "" {
		return nil, fmt.Errorf("role %s: %w (Expiration %q)", role, ErrEmptyKeys, doc.Expiration)
	}
	exp, err := time.Parse(time.RFC3339, doc.Expiration)
	if err != nil {
		return nil, fmt.Errorf("role %s: credential Expiration %q: %w", role, doc.Expiration, err)
	}
	if now := s.deps.Now(); !exp.After(now) {
		return nil, fmt.Errorf("role %s: %w at %s (now %s)", role, ErrExpired, doc.Expiration, now.UTC().Format(time.RFC3339))
	}
	return &baseCreds{role: role, accessKeyID: doc.AccessKeyID, secret: doc.SecretAccessKey, sessTk: doc.Token, expiration: exp.UTC()}, nil
}

func (s *state) checkUpstream(ctx context.Context) Result {
	if u, err := url.Parse(s.cfg.Upstream); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return skip("--upstream %q is not an http(s) URL (see configuration)", s.cfg.Upstream)
	}
	b, err := s.fetchBase(ctx)
	if err != nil {
		return s.upstreamFailure(ctx, err)
	}
	s.mu.Lock()
	s.base = b
	s.mu.Unlock()
	left := b.expiration.Sub(s.deps.Now()).Truncate(time.Second)
	detail := fmt.Sprintf("%s: role %s, credentials valid until %s (%v left)", s.cfg.Upstream, b.role, b.expiration.Format(time.RFC3339), left)
	if left < 5*time.Minute {
		// The helper renews under 10 minutes and EC2 at least 5 minutes
		// ahead: this little left means renewals are failing.
		return Result{Status: Warn, Detail: detail,
			Fix: "the upstream is not renewing its credentials: check its log (journalctl -u aws-signing-helper) for CreateSession errors"}
	}
	return ok("%s", detail)
}

// metadataUpstream reports whether --upstream is the instance metadata
// address, which the redirect intercepts for every process but the daemon.
func (s *state) metadataUpstream() bool {
	u, err := url.Parse(s.cfg.Upstream)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(u.Hostname())
	return err == nil && (a == netip.MustParseAddr("169.254.169.254") || a == netip.MustParseAddr("fd00:ec2::254"))
}

func (s *state) upstreamFailure(ctx context.Context, err error) Result {
	if s.ebpf() && s.metadataUpstream() {
		if st, serr := s.deps.readStatus(s.cfg.BPFPinDir); serr == nil && st.Configured() {
			s.mu.Lock()
			s.guarded = true
			s.mu.Unlock()
			return Result{Status: Warn, Detail: err.Error() + ": the redirect is live, so this process reached the proxy (as a host caller), not EC2's metadata service",
				Fix: "expected while the daemon runs (only the daemon is exempt from the redirect); the daemon's /readyz reports its own upstream check, shown under \"daemon\" below"}
		}
	}
	const helperFix = "is aws-signing-helper.service running (systemctl status aws-signing-helper; journalctl -u aws-signing-helper)? " +
		"Is --upstream right (the helper's `serve --port`, default 9911; http://169.254.169.254 on EC2)?"
	switch {
	case errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES):
		s.mu.Lock()
		s.guarded = true
		s.mu.Unlock()
		return Result{Status: Warn, Detail: err.Error() + ": the redirect's upstream guard refuses every process but the daemon",
			Fix: "expected while the daemon runs (it keeps host-network containers away from the base role); the daemon's /readyz reports its own upstream check, shown under \"daemon\" below"}
	case errors.Is(err, ErrEmptyKeys), errors.Is(err, ErrExpired):
		return Result{Status: Fail, Detail: err.Error() + ": the upstream could not renew its credentials (aws_signing_helper answers a failed CreateSession this way)",
			Fix: "read the helper's log (journalctl -u aws-signing-helper): expired or unreadable certificate or key, wrong trust anchor / profile / role ARN, role trust policy, clock skew, or no route to rolesanywhere.<region>.amazonaws.com"}
	case errors.Is(err, ErrStatus):
		return Result{Status: Fail, Detail: err.Error(),
			Fix: "the upstream does not speak IMDSv2 as expected (a 404 on the role list means it serves no role: on EC2 attach an instance profile); " + helperFix}
	case errors.Is(err, syscall.ECONNREFUSED):
		return Result{Status: Fail, Detail: err.Error() + ": nothing listens there", Fix: helperFix}
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return Result{Status: Fail, Detail: err.Error(), Fix: "the upstream did not answer in time; " + helperFix}
	}
	return Result{Status: Fail, Detail: err.Error(), Fix: helperFix}
}

func (s *state) checkSTS(ctx context.Context) Result {
	s.mu.Lock()
	b, guarded := s.base, s.guarded
	s.mu.Unlock()
	if b == nil {
		if guarded {
			return skip("no base credentials: the upstream is guarded (see upstream)")
		}
		return skip("no base credentials (see upstream)")
	}
	opts := sts.Options{
		Region:           s.cfg.Region,
		Credentials:      credentials.NewStaticCredentialsProvider(b.accessKeyID, b.secret, b.sessTk),
		HTTPClient:       s.deps.STSClient,
		RetryMaxAttempts: 1,
	}
	where := "the regional STS endpoint of " + s.cfg.Region
	if s.cfg.STSEndpoint != "" {
		opts.BaseEndpoint = aws.String(s.cfg.STSEndpoint)
		where = s.cfg.STSEndpoint
	}
	out, err := sts.New(opts).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		var api smithy.APIError
		fix := "check outbound HTTPS to STS (proxy: HTTPS_PROXY in the unit's environment), --region, and --sts-endpoint for VPC endpoints"
		if errors.As(err, &api) {
			switch api.ErrorCode() {
			case "SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken", "RequestExpired":
				fix = "STS rejected the base credentials: check the host clock (timedatectl; SigV4 allows 5 minutes of skew), that --region matches the --sts-endpoint, and that the upstream serves current credentials"
			}
		}
		return Result{Status: Fail, Detail: fmt.Sprintf("GetCallerIdentity at %s: %v", where, err), Fix: fix}
	}
	arn := aws.ToString(out.Arn)
	s.mu.Lock()
	s.baseARN = arn
	s.mu.Unlock()
	if _, _, err := roles.ParseBaseARN(arn); err != nil {
		return Result{Status: Warn, Detail: fmt.Sprintf("base identity %s: %v", arn, err),
			Fix: "the base credentials are not a role session, so bare role names in labels cannot be resolved; use full role ARNs in labels or role credentials upstream"}
	}
	return ok("base identity %s (account %s) via %s", arn, aws.ToString(out.Account), where)
}
