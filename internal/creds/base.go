package creds

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"go.uber.org/zap"
)

const (
	baseFlight     = "\x00base"
	identityFlight = "\x00identity"
)

// Base returns the host's base credentials (for host callers in base
// mode), with AccountID and RoleARN filled in once GetCallerIdentity has
// answered. The result has at least a minute left; errors wrap ErrUpstream.
func (b *Broker) Base(ctx context.Context) (*Credentials, error) {
	c, err := b.baseCreds(ctx)
	if err != nil {
		return nil, err
	}
	if c.AccountID == "" || c.RoleARN == "" {
		if _, err := b.Identity(ctx); err == nil {
			b.baseMu.Lock()
			if b.base != nil && b.base.AccessKeyID == c.AccessKeyID {
				c = b.base
			}
			b.baseMu.Unlock()
		}
	}
	return c, nil
}

// UpstreamReady reports whether valid base credentials can be had.
func (b *Broker) UpstreamReady(ctx context.Context) error {
	_, err := b.baseCreds(ctx)
	return err
}

// Identity returns the base identity, calling STS GetCallerIdentity once
// and caching the answer until the upstream role changes.
func (b *Broker) Identity(ctx context.Context) (Identity, error) {
	b.baseMu.Lock()
	id, failedAt := b.ident, b.identFailAt
	b.baseMu.Unlock()
	if id != nil {
		return *id, nil
	}
	if !failedAt.IsZero() && b.cfg.Now().Sub(failedAt) < retryAfter {
		// Base() asks on every host request while this is unknown: do not
		// put an STS round trip on each of them during an outage.
		return Identity{}, fmt.Errorf("get caller identity: %w: failed recently, retrying after %v", ErrSTS, retryAfter)
	}
	parent := b.detach(ctx)
	ch := b.flights.DoChan(identityFlight, func() (any, error) {
		ctx, cancel := context.WithTimeout(parent, b.cfg.STSTimeout)
		defer cancel()
		if _, err := b.baseCreds(ctx); err != nil {
			return nil, fmt.Errorf("get caller identity: %w", err)
		}
		b.m.stsCalls.WithLabelValues("GetCallerIdentity").Inc()
		out, err := b.sts.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			b.m.stsErrors.WithLabelValues("GetCallerIdentity", errorCode(err)).Inc()
			b.baseMu.Lock()
			b.identFailAt = b.cfg.Now()
			b.baseMu.Unlock()
			return nil, fmt.Errorf("get caller identity: %w: %w", ErrSTS, err)
		}
		id := identityFromARN(aws.ToString(out.Arn), aws.ToString(out.Account))
		b.baseMu.Lock()
		if id.RoleName == "" {
			id.RoleName = b.baseRole
		}
		b.ident, b.identFailAt = &id, time.Time{}
		if b.base != nil {
			b.base = withIdentity(b.base, id)
		}
		b.baseMu.Unlock()
		b.log.Info("base identity", zap.String("role_arn", id.RoleARN), zap.String("account", id.Account))
		return id, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return Identity{}, r.Err
		}
		return r.Val.(Identity), nil
	case <-ctx.Done():
		return Identity{}, fmt.Errorf("get caller identity: %w: %w", ErrSTS, ctx.Err())
	}
}

// identityFromARN derives the base role from a caller ARN such as
// arn:aws:sts::123456789012:assumed-role/name/session.
func identityFromARN(arn, account string) Identity {
	id := Identity{ARN: arn, Account: account, Partition: "aws"}
	f := strings.SplitN(arn, ":", 6)
	if len(f) == 6 && f[0] == "arn" {
		if f[1] != "" {
			id.Partition = f[1]
		}
		if id.Account == "" {
			id.Account = f[4]
		}
		res := strings.Split(f[5], "/")
		switch {
		case f[2] == "sts" && len(res) >= 3 && res[0] == "assumed-role":
			id.RoleName = res[1]
		case f[2] == "iam" && len(res) >= 2 && res[0] == "role":
			id.RoleName = res[len(res)-1]
		}
	}
	if id.RoleName != "" && id.Account != "" {
		id.RoleARN = "arn:" + id.Partition + ":iam::" + id.Account + ":role/" + id.RoleName
	}
	return id
}

// withIdentity returns a copy of c labelled with the base identity.
func withIdentity(c *Credentials, id Identity) *Credentials {
	acct := c.AccountID
	if acct == "" {
		acct = id.Account
	}
	return &Credentials{
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		SessionToken:    c.SessionToken,
		Expiration:      c.Expiration,
		LastUpdated:     c.LastUpdated,
		AccountID:       acct,
		RoleARN:         id.RoleARN,
	}
}

// baseCreds returns cached base credentials, re-fetching them from
// upstream shortly before expiry. On a failed fetch it keeps serving the
// cached ones while they have at least a minute left.
func (b *Broker) baseCreds(ctx context.Context) (*Credentials, error) {
	now := b.cfg.Now()
	b.baseMu.Lock()
	c, tried := b.base, b.baseTriedAt
	b.baseMu.Unlock()
	if c != nil && c.Expiration.Sub(now) > baseRefreshBefore {
		return c, nil
	}
	if c != nil && usable(c, now) && now.Sub(tried) < retryAfter {
		return c, nil
	}
	parent := b.detach(ctx)
	ch := b.flights.DoChan(baseFlight, func() (any, error) {
		b.baseMu.Lock()
		cur := b.base
		b.baseMu.Unlock()
		if cur != nil && cur.Expiration.Sub(b.cfg.Now()) > baseRefreshBefore {
			return cur, nil
		}
		// Token PUT, role list, credentials, and one 401 retry.
		ctx, cancel := context.WithTimeout(parent, 4*b.cfg.UpstreamTimeout)
		defer cancel()
		role, nc, err := b.up.fetch(ctx)
		b.baseMu.Lock()
		defer b.baseMu.Unlock()
		b.baseTriedAt = b.cfg.Now()
		if err == nil && !usable(nc, b.baseTriedAt) {
			err = fmt.Errorf("%w: base credentials expire at %s, under %v from now", ErrUpstream,
				nc.Expiration.Format(time.RFC3339), minServe)
		}
		if err != nil {
			b.m.upstreamErrors.Inc()
			return nil, err
		}
		if role != b.baseRole {
			b.ident = nil // another role: identity must be resolved again
		}
		b.baseRole = role
		if b.ident != nil {
			nc = withIdentity(nc, *b.ident)
		}
		b.base = nc
		b.log.Debug("base credentials fetched", zap.String("role", role),
			zap.Time("expiration", nc.Expiration), zap.String("key_hash", shortHash(nc.AccessKeyID)))
		return nc, nil
	})
	var err error
	select {
	case r := <-ch:
		if r.Err == nil {
			return r.Val.(*Credentials), nil
		}
		err = r.Err
	case <-ctx.Done():
		err = fmt.Errorf("%w: %w", ErrUpstream, ctx.Err())
	}
	if c != nil && usable(c, b.cfg.Now()) {
		b.log.Warn("upstream refresh failed, using cached base credentials",
			zap.Duration("duration", c.Expiration.Sub(b.cfg.Now())), zap.Error(err))
		return c, nil
	}
	return nil, err
}

// baseProvider feeds the broker's cached base credentials to the STS
// client, so the SDK never looks at the host's environment or files.
type baseProvider struct{ b *Broker }

func (p baseProvider) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := p.b.baseCreds(ctx)
	if err != nil {
		return aws.Credentials{}, err
	}
	return aws.Credentials{
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		SessionToken:    c.SessionToken,
		CanExpire:       true,
		Expires:         c.Expiration,
		Source:          "per-docker-roles upstream",
	}, nil
}

// bucket is a token bucket on the wall clock (it limits load on STS, which
// is real time even when tests fake the credential clock).
type bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate, burst float64) *bucket {
	return &bucket{rate: rate, burst: burst, tokens: burst, last: time.Now()}
}

func (k *bucket) allow() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now()
	k.tokens = min(k.burst, k.tokens+now.Sub(k.last).Seconds()*k.rate)
	k.last = now
	if k.tokens < 1 {
		return false
	}
	k.tokens--
	return true
}
