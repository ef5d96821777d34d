package imds

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests    *prometheus.CounterVec   // route, status
	vend        *prometheus.HistogramVec // cache, outcome
	cacheHits   prometheus.Counter
	cacheMisses prometheus.Counter
	// connsRejected counts connections closed at once because MaxConns
	// were open.
	connsRejected prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pdr_imds_requests_total",
			Help: "IMDS requests answered, by route and HTTP status.",
		}, []string{"route", "status"}),
		vend: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pdr_credential_vend_duration_seconds",
			Help: "Time to obtain credentials for one IMDS credential request, by cache (hit, miss, base) and outcome (ok, error).",
			// SDKs give IMDS about 1 s: resolution where that matters.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"cache", "outcome"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pdr_imds_credential_cache_hits_total",
			Help: "IMDS credential answers the broker served from its cache (the broker counts its own hits, including prefetch, in pdr_credential_cache_hits_total).",
		}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pdr_imds_credential_cache_misses_total",
			Help: "Container credential requests that needed a fresh AssumeRole.",
		}),
		connsRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pdr_imds_connections_rejected_total",
			Help: "Connections closed on accept because the proxy's connection limit was reached.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.vend, m.cacheHits, m.cacheMisses, m.connsRejected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register imds metrics: %w", err)
		}
	}
	return m, nil
}

// statusLabel spares an allocation per request for the statuses we send.
func statusLabel(code int) string {
	switch code {
	case 200:
		return "200"
	case 400:
		return "400"
	case 401:
		return "401"
	case 403:
		return "403"
	case 404:
		return "404"
	case 405:
		return "405"
	case 500:
		return "500"
	case 503:
		return "503"
	}
	return strconv.Itoa(code)
}
