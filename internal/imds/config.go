package imds

import (
	"fmt"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/roles"
	"github.com/per-docker-roles/per-docker-roles/internal/token"
)

// Host caller policies.
const (
	HostDeny = "deny" // host processes get 404, like a container without a role
	HostBase = "base" // host processes get the upstream base role unchanged
)

// MaxTokenTTL is EC2's upper bound for X-aws-ec2-metadata-token-ttl-seconds.
const MaxTokenTTL = 21600 * time.Second

// Config configures the IMDS surface. Zero values take the defaults.
type Config struct {
	// IMDSv1 serves tokenless GETs. Off by default: a tokenless GET gets
	// 401, so only clients that speak IMDSv2 get credentials.
	IMDSv1 bool
	// HostCallers is HostDeny (default) or HostBase.
	HostCallers string
	// Tokens bounds the token table (token.Config defaults).
	Tokens token.Config
	// Roles is the role selection policy (roles.Config defaults).
	Roles roles.Config
	// IdentifyTimeout bounds one Identify call (default 2s): botocore
	// gives IMDS about a second per attempt, waiting longer helps nobody.
	IdentifyTimeout time.Duration
	// ShutdownTimeout bounds the graceful shutdown Serve does when its
	// context ends (default 5s).
	ShutdownTimeout time.Duration
	// MaxConns bounds open connections over all listeners (default 4096).
	// Past it new connections are closed at once, so a flood from one
	// container costs bounded memory and SDKs elsewhere fail fast and retry
	// instead of hanging in the accept queue.
	MaxConns int
}

func (c Config) withDefaults() Config {
	if c.HostCallers == "" {
		c.HostCallers = HostDeny
	}
	if c.IdentifyTimeout == 0 {
		c.IdentifyTimeout = 2 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 5 * time.Second
	}
	if c.MaxConns == 0 {
		c.MaxConns = 4096
	}
	return c
}

// Validate reports the first mistake in c (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	switch c.HostCallers {
	case HostDeny, HostBase:
	default:
		return fmt.Errorf("imds config: host callers %q: want %q or %q", c.HostCallers, HostDeny, HostBase)
	}
	if c.IdentifyTimeout < 0 || c.ShutdownTimeout < 0 || c.MaxConns < 0 {
		return fmt.Errorf("imds config: negative timeout (identify %s, shutdown %s)", c.IdentifyTimeout, c.ShutdownTimeout)
	}
	if c.Tokens.MaxTokens < 0 || c.Tokens.MaxPerCaller < 0 {
		return fmt.Errorf("imds config: negative token limits %+v", c.Tokens)
	}
	if _, err := roles.New(c.Roles); err != nil {
		return fmt.Errorf("imds config: %w", err)
	}
	return nil
}
