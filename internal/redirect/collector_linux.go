//go:build linux

package redirect

import (
	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports the kernel's per-CPU counters (read at scrape time)
// and this process's record lookups.
type collector struct {
	counters *ebpf.Map
	events   *prometheus.Desc
	lookups  *prometheus.CounterVec
}

func newCollector(counters *ebpf.Map) *collector {
	return &collector{
		counters: counters,
		events: prometheus.NewDesc("pdr_redirect_kernel_events_total",
			"Connection events counted by the eBPF redirect (kept across daemon restarts).",
			[]string{"event"}, nil),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pdr_redirect_lookups_total",
			Help: "Redirect record lookups by the proxy, by result (hit, miss, conflict, error).",
		}, []string{"result"}),
	}
}

// lookup counts one Lookup; a nil collector (no registry) counts nothing.
func (c *collector) lookup(result string) {
	if c != nil {
		c.lookups.WithLabelValues(result).Inc()
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	c.lookups.Describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.lookups.Collect(ch)
	n, err := readCounters(c.counters)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.events, err)
		return
	}
	for _, e := range []struct {
		name string
		v    uint64
	}{
		{"redirected", n.Redirected},
		{"exempt", n.Exempt},
		{"refused", n.Refused},
		{"guard_refused", n.GuardRefused},
		{"recorded", n.Recorded},
		{"conflict", n.Conflict},
		{"getpeername", n.Peername},
	} {
		ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(e.v), e.name)
	}
}
