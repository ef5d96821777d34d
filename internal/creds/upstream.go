package creds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	imdsTokenPath = "/latest/api/token"
	imdsCredsPath = "/latest/meta-data/iam/security-credentials/"
	// upstreamTokenTTL is what we ask for: the longest IMDS allows, so the
	// helper's 256-token table holds one entry of ours for hours.
	upstreamTokenTTL = 6 * time.Hour
	// tokenRenewBefore re-mints the token this long before it lapses.
	tokenRenewBefore = time.Minute
	maxUpstreamBody  = 64 << 10
)

// errUnauthorized is a 401 from upstream: our token was evicted or expired.
var errUnauthorized = errors.New("upstream answered 401")

// upstream is an IMDSv2 client holding one token session of its own.
type upstream struct {
	base    *url.URL
	client  *http.Client
	now     func() time.Time
	timeout time.Duration

	mu       sync.Mutex
	token    string
	tokenExp time.Time
}

// fetch returns the upstream role name and its credentials, validated.
func (u *upstream) fetch(ctx context.Context) (string, *Credentials, error) {
	body, err := u.get(ctx, imdsCredsPath)
	if err != nil {
		return "", nil, err
	}
	role, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	role = strings.TrimSpace(role)
	if role == "" || strings.ContainsAny(role, "/?#") {
		return "", nil, fmt.Errorf("%w: GET %s: no usable role name (%q)", ErrUpstream, imdsCredsPath, role)
	}
	p := imdsCredsPath + url.PathEscape(role)
	body, err = u.get(ctx, p)
	if err != nil {
		return "", nil, err
	}
	c, err := parseUpstreamCredential(body, u.now())
	if err != nil {
		return "", nil, fmt.Errorf("GET %s: %w", p, err)
	}
	return role, c, nil
}

// parseUpstreamCredential validates an IMDS RefreshableCred document.
// aws_signing_helper answers a failed refresh with Code "Success", empty
// keys and Expiration 0001-01-01: that must never be passed on.
func parseUpstreamCredential(body []byte, now time.Time) (*Credentials, error) {
	var doc imdsCredential
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("%w: credential document: %v", ErrUpstream, err)
	}
	if doc.Code != "Success" {
		return nil, fmt.Errorf("%w: credential Code %q", ErrUpstream, doc.Code)
	}
	if doc.AccessKeyID == "" || doc.SecretAccessKey == "" || doc.Token == "" {
		return nil, fmt.Errorf("%w: credential document has empty keys", ErrUpstream)
	}
	exp, err := time.Parse(time.RFC3339, doc.Expiration)
	if err != nil {
		return nil, fmt.Errorf("%w: credential Expiration %q: %v", ErrUpstream, doc.Expiration, err)
	}
	if !exp.After(now) {
		return nil, fmt.Errorf("%w: credential expired at %s (now %s)", ErrUpstream, doc.Expiration, now.UTC().Format(time.RFC3339))
	}
	updated, err := time.Parse(time.RFC3339, doc.LastUpdated)
	if err != nil {
		updated = now
	}
	return &Credentials{
		AccessKeyID:     doc.AccessKeyID,
		SecretAccessKey: doc.SecretAccessKey,
		SessionToken:    doc.Token,
		Expiration:      exp.UTC(),
		LastUpdated:     updated.UTC(),
		AccountID:       doc.AccountID,
	}, nil
}

// get performs an authenticated GET, re-minting the token once on 401.
func (u *upstream) get(ctx context.Context, path string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		tok, err := u.currentToken(ctx)
		if err != nil {
			return nil, err
		}
		body, err := u.do(ctx, http.MethodGet, path, func(r *http.Request) {
			r.Header.Set("X-aws-ec2-metadata-token", tok)
		})
		if errors.Is(err, errUnauthorized) && attempt == 0 {
			u.dropToken(tok)
			continue
		}
		return body, err
	}
}

func (u *upstream) currentToken(ctx context.Context) (string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	// Holding the lock while minting makes concurrent callers share one
	// PUT instead of each opening a session upstream.
	if u.token != "" && u.now().Before(u.tokenExp.Add(-tokenRenewBefore)) {
		return u.token, nil
	}
	issued := u.now()
	ttl := strconv.Itoa(int(upstreamTokenTTL / time.Second))
	body, err := u.do(ctx, http.MethodPut, imdsTokenPath, func(r *http.Request) {
		r.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", ttl)
	})
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(body))
	if tok == "" {
		return "", fmt.Errorf("%w: PUT %s: empty token", ErrUpstream, imdsTokenPath)
	}
	u.token, u.tokenExp = tok, issued.Add(upstreamTokenTTL)
	return tok, nil
}

// dropToken forgets tok unless another caller already replaced it.
func (u *upstream) dropToken(tok string) {
	u.mu.Lock()
	if u.token == tok {
		u.token = ""
	}
	u.mu.Unlock()
}

func (u *upstream) do(ctx context.Context, method, path string, setHeaders func(*http.Request)) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	target := u.base.JoinPath(path)
	if strings.HasSuffix(path, "/") && !strings.HasSuffix(target.Path, "/") {
		target.Path += "/"
	}
	req, err := http.NewRequestWithContext(ctx, method, target.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %v", ErrUpstream, method, path, err)
	}
	setHeaders(req)
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %v", ErrUpstream, method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody))
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: read body: %v", ErrUpstream, method, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, fmt.Errorf("%w: %s %s: %w", ErrUpstream, method, path, errUnauthorized)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%w: %s %s: status %d", ErrUpstream, method, path, resp.StatusCode)
	}
	return body, nil
}
