package creds

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	stsCalls       *prometheus.CounterVec
	stsErrors      *prometheus.CounterVec
	upstreamErrors prometheus.Counter
	hits           prometheus.Counter
	misses         prometheus.Counter
	stale          prometheus.Counter
	refreshes      *prometheus.CounterVec
	evictions      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, entries func() float64) (*metrics, error) {
	m := &metrics{
		stsCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pdr_sts_calls_total", Help: "STS API calls made by the credential broker.",
		}, []string{"action"}),
		stsErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pdr_sts_errors_total", Help: "Failed STS API calls, by AWS error code.",
		}, []string{"action", "code"}),
		upstreamErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pdr_upstream_errors_total", Help: "Failed or invalid base credential fetches from the upstream IMDS endpoint.",
		}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pdr_credential_cache_hits_total", Help: "Credential requests answered from the cache without waiting for STS.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pdr_credential_cache_misses_total", Help: "Credential requests that waited for STS.",
		}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pdr_credential_stale_served_total", Help: "Still-valid cached credentials served because a refresh failed.",
		}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pdr_credential_refreshes_total", Help: "Ahead-of-expiry refreshes, by result.",
		}, []string{"result"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pdr_credential_cache_evictions_total", Help: "Sessions evicted from the full credential cache.",
		}),
	}
	cs := []prometheus.Collector{
		m.stsCalls, m.stsErrors, m.upstreamErrors, m.hits, m.misses, m.stale, m.refreshes, m.evictions,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pdr_credential_cache_entries", Help: "Assumed-role sessions held in the credential cache.",
		}, entries),
	}
	var errs []error
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register credential broker metrics: %w", err)
	}
	return m, nil
}
