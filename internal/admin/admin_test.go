package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestEndpoints(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "pdr_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	var upstreamDown atomic.Bool
	s := New(reg, map[string]Check{
		"index": func(context.Context) error { return nil },
		"upstream": func(context.Context) error {
			if upstreamDown.Load() {
				return errors.New("connection refused")
			}
			return nil
		},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		path     string
		down     bool
		status   int
		contains string
	}{
		{"/healthz", true, 200, "ok"},
		{"/readyz", false, 200, "ready"},
		{"/readyz", true, 503, "upstream: connection refused"},
		{"/metrics", false, 200, "pdr_test_total 3"},
		{"/nope", false, 404, ""},
	}
	for _, tt := range tests {
		upstreamDown.Store(tt.down)
		status, body := get(tt.path)
		if status != tt.status || !strings.Contains(body, tt.contains) {
			t.Errorf("GET %s (upstream down=%v) = %d %q, want %d containing %q", tt.path, tt.down, status, body, tt.status, tt.contains)
		}
	}
}
