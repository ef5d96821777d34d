package imds

import (
	"context"
	"net/netip"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/creds"
	"github.com/per-docker-roles/per-docker-roles/internal/identity"
)

// Identifier resolves an accepted connection to its caller. It is
// identity.Strategy; the server calls it once per connection.
//
// Errors: identity.ErrNoRecord (the connection did not come through the
// redirect: 403 for the whole connection); identity.ErrNotSynced or any
// other error is taken as transient (503 and Connection: close, so the
// client reconnects and is identified afresh).
type Identifier interface {
	Identify(ctx context.Context, peer, local netip.AddrPort) (identity.Caller, error)
}

// Broker hands out credentials. The server needs nothing else from the
// credential layer: prefetching and refresh are the broker's business.
type Broker interface {
	// Get returns credentials for a container's role, from cache or fresh;
	// cacheHit says which (for metrics and the audit log). Errors wrapping
	// creds.ErrUpstream or creds.ErrSTS become 503 with a short reason;
	// so does any other error. Credentials that are not Valid at the
	// server's clock are refused as well (503), never passed on.
	Get(ctx context.Context, req creds.Request) (c *creds.Credentials, cacheHit bool, err error)

	// Base returns the upstream base credentials unchanged. Used only for
	// host callers under HostCallers "base". AccountID should be set for
	// the -extended document to carry it.
	Base(ctx context.Context) (*creds.Credentials, error)

	// BaseARN returns the ARN of the base credentials' role: a role ARN
	// (arn:aws:iam::123456789012:role/name) or an assumed-role ARN
	// (arn:aws:sts::123456789012:assumed-role/name/session). It gives the
	// account and partition bare role names resolve in, and the role name
	// host callers see. It should not need upstream once known (cache it):
	// it is asked on every role-list and credential request.
	BaseARN(ctx context.Context) (string, error)
}

// Deps are the server's collaborators.
type Deps struct {
	Identifier Identifier
	Broker     Broker
	Now        func() time.Time // clock for tokens and validity checks; time.Now when nil
}
