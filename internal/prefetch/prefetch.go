// Package prefetch warms the credential cache when a labelled container
// starts, so its first IMDS request does not wait for STS (botocore gives
// IMDS about one second).
package prefetch

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/per-docker-roles/per-docker-roles/internal/creds"
	"github.com/per-docker-roles/per-docker-roles/internal/docker"
	"github.com/per-docker-roles/per-docker-roles/internal/roles"
)

// Policy selects a container's role (roles.Policy).
type Policy interface {
	Select(labels map[string]string, base roles.Base) (roles.Role, error)
}

// Broker is the part of the credential broker prefetching needs.
type Broker interface {
	Identity(ctx context.Context) (creds.Identity, error)
	Prefetch(req creds.Request)
}

// queueLen bounds pending starts; beyond it, starts are dropped (the
// container's first request then fetches on demand).
const queueLen = 256

// Prefetcher turns container starts into broker prefetches on one worker.
type Prefetcher struct {
	policy Policy
	broker Broker
	log    *zap.Logger
	queue  chan docker.Container
}

// New returns a Prefetcher; call Run to start its worker.
func New(policy Policy, broker Broker, log *zap.Logger) *Prefetcher {
	return &Prefetcher{policy: policy, broker: broker, log: log, queue: make(chan docker.Container, queueLen)}
}

// ContainerStarted is the docker index's OnStart hook: it never blocks.
func (p *Prefetcher) ContainerStarted(c docker.Container) {
	select {
	case p.queue <- c:
	default:
		p.log.Debug("prefetch queue full; container will fetch on first request",
			zap.String("container", c.Name), zap.String("container_id", c.ID))
	}
}

// Run serves the queue until ctx ends.
func (p *Prefetcher) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case c := <-p.queue:
			p.one(ctx, c)
		}
	}
}

func (p *Prefetcher) one(ctx context.Context, c docker.Container) {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	id, err := p.broker.Identity(ictx)
	cancel()
	if err != nil {
		p.log.Debug("prefetch skipped: base identity unknown", zap.String("container", c.Name), zap.Error(err))
		return
	}
	role, err := p.policy.Select(c.Labels, roles.Base{Account: id.Account, Partition: id.Partition})
	if errors.Is(err, roles.ErrNoLabel) {
		return
	}
	if err != nil {
		// The request path logs refusals with the full reason; here one
		// line at start tells the operator early.
		p.log.Warn("container's role label refused", zap.String("container", c.Name),
			zap.String("container_id", c.ID), zap.Error(err))
		return
	}
	p.broker.Prefetch(creds.Request{RoleARN: role.ARN, ExternalID: role.ExternalID, SessionName: roles.SessionName(c.Name, c.ID)})
}
