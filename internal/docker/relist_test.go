package docker

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeEngine is just enough of the Engine API for relist: it lists no
// containers and counts the lists.
type fakeEngine struct {
	lists atomic.Int32
	sock  string
}

func newFakeEngine(t *testing.T) *fakeEngine {
	t.Helper()
	f := &fakeEngine{sock: filepath.Join(t.TempDir(), "fake.sock")}
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", "1.41")
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasSuffix(r.URL.Path, "/_ping"):
			_, _ = w.Write([]byte("OK"))
		case strings.HasSuffix(r.URL.Path, "/containers/json"):
			f.lists.Add(1)
			time.Sleep(20 * time.Millisecond) // a list takes a while
			_, _ = w.Write([]byte("[]"))
		default:
			http.NotFound(w, r)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f
}

func TestByIPMissRelistIsSharedAndRateLimited(t *testing.T) {
	t.Parallel()
	eng := newFakeEngine(t)
	x, reg := offlineIndex(t, Config{Host: "unix://" + eng.sock})
	ctx := context.Background()

	// 50 concurrent misses share one list.
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ok := x.ByIP(ctx, mustAddr("172.17.9."+strconv.Itoa(i))); ok {
				t.Error("stranger identified")
			}
		}()
	}
	wg.Wait()
	if n := eng.lists.Load(); n < 1 || n > 2 {
		t.Errorf("%d lists for 50 concurrent misses, want 1 or 2", n)
	}

	// Eight callers missing back to back for one second: the engine sees
	// at most one list per 250ms.
	before := eng.lists.Load()
	start := time.Now()
	var misses atomic.Int32
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < time.Second {
				x.ByIP(ctx, mustAddr("172.17.8."+strconv.Itoa(g)))
				misses.Add(1)
			}
		}()
	}
	wg.Wait()
	lists := eng.lists.Load() - before
	if max := int32(time.Since(start)/relistInterval) + 1; lists > max {
		t.Errorf("%d lists in %v (%d misses), want at most %d", lists, time.Since(start), misses.Load(), max)
	}
	t.Logf("%d misses in %v caused %d lists", misses.Load(), time.Since(start), lists)
	if got := metricValue(t, reg, "pdr_index_resolves_total", map[string]string{"by": "ip", "result": "miss"}); got < float64(misses.Load()) {
		t.Errorf("ip miss metric = %v, want >= %d", got, misses.Load())
	}

	// A cancelled caller does not wait for the shared list.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, ok := x.ByIP(cctx, mustAddr("172.17.9.201")); ok {
		t.Error("identified with a cancelled context")
	}
}
