package docker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
)

// Config configures an Index.
type Config struct {
	// Host is the Docker endpoint ("unix:///run/docker.sock", "tcp://...").
	// Empty means the environment (DOCKER_HOST) or the default socket.
	Host string
	// CgroupRoot is the cgroup2 mount point. Empty means cgroup.Mount().
	CgroupRoot string
	// OnStart is called each time a running container enters the index
	// (start event, sync, or a synchronous resolve on a miss), from the
	// goroutine that added it. It must not block: hand the work off (the
	// credential broker uses it to prefetch).
	OnStart func(Container)
	// OnRemove is called each time a container leaves the index (it died,
	// was removed, or vanished during a resync). It must not block.
	OnRemove func(Container)
}

const (
	// relistInterval bounds how often a ByIP miss may re-list containers.
	relistInterval = 250 * time.Millisecond
	// negativeTTL is how long a cgroup id that belongs to no container is
	// remembered, so host processes do not cost a cgroup walk each.
	negativeTTL = 2 * time.Second
	// maxNegative bounds the negative cache.
	maxNegative = 1024
	// maxSubCgroups bounds the cache of sub-cgroup ids (cgroups created by
	// processes inside containers) resolved to their container.
	maxSubCgroups = 4096
	// maxTombstones bounds the record of recent removals.
	maxTombstones = 4096
	// maxCgroupWalk bounds the cgroup directories one resolve may visit.
	maxCgroupWalk = 100000
	// backoffMin and backoffMax bound the reconnect delay.
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
	// inspectTimeout bounds one inspect or list made on a request path.
	inspectTimeout = 5 * time.Second
)

// Index is an in-memory view of the running containers of one Docker
// engine, indexed by id, IP and cgroup id.
//
// Run keeps it current: a full list + inspect, then the events stream.
// When the engine goes away (dockerd restart), Run reconnects with
// exponential backoff and resyncs fully: containers that vanished are
// dropped, new ones added. Synced stays true across a reconnect: while
// disconnected the index keeps serving its last-known state (a container
// that dies meanwhile is still caught by the liveness check in ByIP and
// cannot be resolved anew), because answering 503 to every container on
// each dockerd restart would be worse.
//
// On a miss, ByCgroupID and ByIP resolve synchronously against the engine
// before answering, so a container that asks before its start event has
// been processed is still identified (the start-up race).
//
// Containers that share another's network namespace (--network
// container:<id>) have no IPs of their own: their traffic carries the
// owner's addresses, so by IP they cannot be told apart from the owner and
// the IP index maps those addresses to the owner only.
type Index struct {
	cfg   Config
	log   *zap.Logger
	cli   *client.Client
	mount string // cgroup2 mount; "" when there is none
	mErr  error  // why mount is ""

	mu         sync.RWMutex
	byID       map[string]*entry
	byIP       map[netip.Addr][]string // ids claiming the address; a hit needs exactly one
	byCg       map[uint64]string       // container cgroup id -> container id
	subCg      map[uint64]string       // sub-cgroup id -> container id (bounded)
	negCg      map[uint64]time.Time    // cgroup id -> when it was found to be no container's
	tombstones map[string]uint64       // container id -> version at removal
	version    uint64                  // bumped on every change

	synced     atomic.Bool
	syncedOnce sync.Once
	syncedCh   chan struct{}

	sf         singleflight.Group
	relistMu   sync.Mutex
	lastRelist time.Time // when the last relist started

	// beforeEvent, when set (tests only), runs before each event is
	// handled, so a test can hold the event stream back.
	beforeEvent func(events.Message)

	m metrics
}

type entry struct {
	c   Container
	ver uint64 // version when last upserted
	// checkLive is true when /proc/<pid>/cgroup named the container when
	// it was added, so the same check can later tell it is gone.
	checkLive bool
}

type metrics struct {
	containers prometheus.Gauge
	synced     prometheus.Gauge
	events     *prometheus.CounterVec
	reconnects prometheus.Counter
	resolves   *prometheus.CounterVec
}

// New validates cfg and builds an Index. It does not contact the engine:
// Run does, and Ping checks reachability for start-up diagnostics.
func New(cfg Config, log *zap.Logger, reg prometheus.Registerer) (*Index, error) {
	if log == nil {
		log = zap.NewNop()
	}
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client for %q: %w", cfg.Host, err)
	}
	x := &Index{
		cfg:        cfg,
		log:        log,
		cli:        cli,
		byID:       map[string]*entry{},
		byIP:       map[netip.Addr][]string{},
		byCg:       map[uint64]string{},
		subCg:      map[uint64]string{},
		negCg:      map[uint64]time.Time{},
		tombstones: map[string]uint64{},
		syncedCh:   make(chan struct{}),
	}
	x.mount = cfg.CgroupRoot
	if x.mount == "" {
		x.mount, x.mErr = cgroup.Mount()
		if x.mErr != nil {
			log.Warn("no cgroup2 mount: containers get no cgroup id, cgroup identity unavailable", zap.Error(x.mErr))
		}
	}
	x.m = metrics{
		containers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pdr_index_containers", Help: "Running containers in the index."}),
		synced: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pdr_index_synced", Help: "1 once the container index completed its first full sync."}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pdr_docker_events_total", Help: "Docker events handled, by action."}, []string{"action"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pdr_docker_reconnects_total", Help: "Reconnections to the Docker engine after the event stream broke."}),
		resolves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pdr_index_resolves_total", Help: "Synchronous resolves after an index miss, by key and result."}, []string{"by", "result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{x.m.containers, x.m.synced, x.m.events, x.m.reconnects, x.m.resolves} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register docker index metrics: %w", err)
			}
		}
	}
	return x, nil
}

// Close releases the Docker client. Call it after Run has returned.
func (x *Index) Close() error { return x.cli.Close() }

// Ping checks that the engine answers.
func (x *Index) Ping(ctx context.Context) error {
	if _, err := x.cli.Ping(ctx); err != nil {
		return fmt.Errorf("ping docker at %s: %w", x.cli.DaemonHost(), err)
	}
	return nil
}

// Synced reports whether the first full sync has completed. It stays true
// across reconnects (see Index).
func (x *Index) Synced() bool { return x.synced.Load() }

// WaitSynced blocks until the first full sync has completed or ctx ends.
func (x *Index) WaitSynced(ctx context.Context) error {
	select {
	case <-x.syncedCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for container index sync: %w", ctx.Err())
	}
}

// Len returns the number of running containers in the index.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.byID)
}

// Containers returns a copy of every container in the index, sorted by name.
func (x *Index) Containers() []Container {
	x.mu.RLock()
	out := make([]Container, 0, len(x.byID))
	for _, e := range x.byID {
		out = append(out, e.c.clone())
	}
	x.mu.RUnlock()
	slices.SortFunc(out, func(a, b Container) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (c Container) clone() Container {
	c.Labels = maps.Clone(c.Labels)
	c.IPs = slices.Clone(c.IPs)
	return c
}

// ByID returns the running container with this full id, inspecting the
// engine when the index does not know it. A container that is not running
// is (Container{}, false, nil).
func (x *Index) ByID(ctx context.Context, id string) (Container, bool, error) {
	x.mu.RLock()
	e, ok := x.byID[id]
	x.mu.RUnlock()
	if ok {
		return e.c.clone(), true, nil
	}
	c, ok, err := x.resolveID(ctx, id)
	if err != nil || !ok {
		return Container{}, false, err
	}
	return c.clone(), true, nil
}

// ByIP returns the container that holds addr on one of its networks.
// IPv4-mapped IPv6 addresses are unmapped. An address claimed by two live
// containers at once matches neither. On a miss it re-lists the running
// containers (shared by concurrent callers, at most once per 250ms) and
// looks again.
func (x *Index) ByIP(ctx context.Context, addr netip.Addr) (Container, bool) {
	addr = addr.Unmap()
	if c, ok := x.lookupIP(addr); ok {
		return c, true
	}
	if err := x.relist(ctx); err != nil {
		x.m.resolves.WithLabelValues("ip", "error").Inc()
		x.log.Debug("relist after IP miss", zap.Stringer("peer", addr), zap.Error(err))
		return Container{}, false
	}
	c, ok := x.lookupIP(addr)
	if ok {
		x.m.resolves.WithLabelValues("ip", "hit").Inc()
	} else {
		x.m.resolves.WithLabelValues("ip", "miss").Inc()
	}
	return c, ok
}

func (x *Index) lookupIP(addr netip.Addr) (Container, bool) {
	for range 2 { // a second pass after dropping a dead holder
		x.mu.RLock()
		ids := x.byIP[addr]
		var holders []*entry
		for _, id := range ids {
			holders = append(holders, x.byID[id])
		}
		x.mu.RUnlock()
		dead := false
		var live []*entry
		for _, e := range holders {
			if x.alive(e) {
				live = append(live, e)
			} else {
				// Its die event has not been processed yet: drop it now, so
				// a container that reuses the address is not mistaken for it.
				x.remove(e.c.ID, "liveness")
				dead = true
			}
		}
		if len(live) == 1 {
			return live[0].c.clone(), true
		}
		if len(live) > 1 {
			x.log.Warn("address claimed by several running containers; identifying none",
				zap.Stringer("peer", addr), zap.Int("count", len(live)))
			return Container{}, false
		}
		if !dead {
			return Container{}, false
		}
	}
	return Container{}, false
}

// alive re-reads the cgroup of the container's init process: if that
// process is gone (or the pid now belongs to something else) the container
// has died even if its die event is still in flight.
func (x *Index) alive(e *entry) bool {
	if !e.checkLive {
		return true
	}
	p, err := cgroup.ProcPath(e.c.Pid)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist)
	}
	return strings.Contains(p, e.c.ID)
}

// ByCgroupID returns the container whose cgroup, or a cgroup below it, has
// this id. On a miss it finds the cgroup directory, takes the container id
// from its path and inspects it. A cgroup that belongs to no container (a
// host process) is (Container{}, false, nil).
func (x *Index) ByCgroupID(ctx context.Context, id uint64) (Container, bool, error) {
	x.mu.RLock()
	cid, ok := x.byCg[id]
	if !ok {
		cid, ok = x.subCg[id]
	}
	var e *entry
	if ok {
		e, ok = x.byID[cid]
	}
	neg, negOK := x.negCg[id]
	x.mu.RUnlock()
	if ok {
		return e.c.clone(), true, nil
	}
	if negOK && time.Since(neg) < negativeTTL {
		return Container{}, false, nil
	}
	if x.mount == "" {
		return Container{}, false, fmt.Errorf("resolve cgroup %d: %w", id, x.mErr)
	}
	v, err, _ := x.sf.Do(fmt.Sprintf("cg:%d", id), func() (any, error) {
		return x.resolveCgroup(ctx, id)
	})
	if err != nil {
		x.m.resolves.WithLabelValues("cgroup", "error").Inc()
		return Container{}, false, err
	}
	c, ok := v.(*Container)
	if !ok || c == nil {
		x.m.resolves.WithLabelValues("cgroup", "miss").Inc()
		return Container{}, false, nil
	}
	x.m.resolves.WithLabelValues("cgroup", "hit").Inc()
	return c.clone(), true, nil
}

func (x *Index) resolveCgroup(ctx context.Context, id uint64) (*Container, error) {
	p, err := cgroup.PathByID(x.mount, "/", id, maxCgroupWalk)
	if errors.Is(err, cgroup.ErrNotFound) {
		// Gone already, or never a cgroup: nobody we can name.
		x.rememberNegative(id)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("resolve cgroup %d: %w", id, err)
	}
	for _, cid := range containerIDsInPath(p) {
		x.mu.RLock()
		e, known := x.byID[cid]
		x.mu.RUnlock()
		if known && underPath(p, e.c.CgroupPath) {
			if e.c.CgroupID != id {
				x.rememberSub(id, cid)
			}
			c := e.c
			return &c, nil
		}
		c, ok, err := x.resolveID(ctx, cid)
		if err != nil {
			return nil, fmt.Errorf("resolve cgroup %d (%s): %w", id, p, err)
		}
		if ok && c.CgroupPath == "" && c.Pid == 0 {
			// Starting (see startingEntry): the caller's own cgroup path
			// names the container, which is all the kernel can tell us.
			c.CgroupPath = containerCgroup(p, c.ID)
			if cgid, err := cgroup.ID(filepath.Join(x.mount, c.CgroupPath)); err == nil {
				c.CgroupID = cgid
			}
		}
		if !ok || !underPath(p, c.CgroupPath) {
			continue // not ours (e.g. a nested engine's container): try the parent
		}
		if c.CgroupID != id {
			x.rememberSub(id, c.ID)
		}
		return &c, nil
	}
	x.rememberNegative(id)
	return nil, nil
}

func (x *Index) rememberNegative(id uint64) {
	now := time.Now()
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.negCg) >= maxNegative {
		for k, t := range x.negCg {
			if now.Sub(t) >= negativeTTL {
				delete(x.negCg, k)
			}
		}
		if len(x.negCg) >= maxNegative {
			clear(x.negCg)
		}
	}
	x.negCg[id] = now
}

func (x *Index) rememberSub(id uint64, cid string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.byID[cid]; !ok {
		return
	}
	if len(x.subCg) >= maxSubCgroups {
		clear(x.subCg) // rare; entries are found again on demand
	}
	x.subCg[id] = cid
}

// resolveID inspects one container and adds it when running.
func (x *Index) resolveID(ctx context.Context, id string) (Container, bool, error) {
	v, err, _ := x.sf.Do("id:"+id, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), inspectTimeout)
		defer cancel()
		c, ok, err := x.inspectAndApply(ctx, id)
		if err != nil || !ok {
			return nil, err
		}
		return &c, nil
	})
	if err != nil {
		return Container{}, false, err
	}
	c, ok := v.(*Container)
	if !ok || c == nil {
		return Container{}, false, nil
	}
	return *c, true, nil
}

// relist lists the running containers and adds those the index lacks.
// Concurrent callers share one run; runs start at most once per
// relistInterval. A caller whose miss came after the shared run had
// started waits for one more, so the list it sees is newer than its miss.
func (x *Index) relist(ctx context.Context) error {
	asked := time.Now()
	for range 2 {
		ch := x.sf.DoChan("relist", func() (any, error) {
			x.relistMu.Lock()
			wait := relistInterval - time.Since(x.lastRelist)
			x.relistMu.Unlock()
			if wait > 0 {
				time.Sleep(wait)
			}
			started := time.Now()
			x.relistMu.Lock()
			x.lastRelist = started
			x.relistMu.Unlock()
			lctx, cancel := context.WithTimeout(context.Background(), inspectTimeout)
			defer cancel()
			return started, x.sync(lctx, false)
		})
		select {
		case <-ctx.Done():
			return fmt.Errorf("relist containers: %w", ctx.Err())
		case r := <-ch:
			if r.Err != nil {
				return r.Err
			}
			if started, _ := r.Val.(time.Time); !started.Before(asked) {
				return nil
			}
		}
	}
	return nil
}

// sync lists the running containers and inspects them: all of them when
// full (then containers the list lacks are dropped), else only those the
// index does not know.
func (x *Index) sync(ctx context.Context, full bool) error {
	x.mu.RLock()
	v0 := x.version
	x.mu.RUnlock()
	// "created" too: a container's process runs (and may already dial the
	// metadata address) a moment before dockerd marks it running.
	list, err := x.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("status", "running"), filters.Arg("status", "created"))})
	if err != nil {
		return fmt.Errorf("list containers at %s: %w", x.cli.DaemonHost(), err)
	}
	listed := make(map[string]bool, len(list))
	for _, s := range list {
		listed[s.ID] = true
		if !full {
			x.mu.RLock()
			_, known := x.byID[s.ID]
			x.mu.RUnlock()
			if known {
				continue
			}
		}
		if _, _, err := x.inspectAndApply(ctx, s.ID); err != nil {
			return err
		}
	}
	if !full {
		return nil
	}
	// Drop what the list lacks, unless something (an event or a resolve)
	// touched it after the list was taken.
	var gone []string
	x.mu.RLock()
	for id, e := range x.byID {
		if !listed[id] && e.ver <= v0 {
			gone = append(gone, id)
		}
	}
	x.mu.RUnlock()
	for _, id := range gone {
		x.remove(id, "resync")
	}
	return nil
}

// inspectAndApply inspects id and upserts or removes it to match.
func (x *Index) inspectAndApply(ctx context.Context, id string) (Container, bool, error) {
	x.mu.RLock()
	v0 := x.version
	x.mu.RUnlock()
	resp, err := x.cli.ContainerInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		x.remove(id, "not found")
		return Container{}, false, nil
	}
	if err != nil {
		return Container{}, false, fmt.Errorf("inspect container %s: %w", id, err)
	}
	e, ok := x.fromInspect(resp)
	if !ok {
		x.remove(resp.ID, "not running")
		return Container{}, false, nil
	}
	if !x.upsert(e, v0) {
		return Container{}, false, nil
	}
	return e.c, true, nil
}

func (x *Index) fromInspect(r container.InspectResponse) (*entry, bool) {
	if r.ContainerJSONBase == nil || r.State == nil {
		return nil, false
	}
	if !r.State.Running || r.State.Pid <= 0 {
		// Between the task starting and dockerd recording it, inspect
		// says "created" with no pid while the network is already up and
		// the process may be talking to us: that is the start-up race.
		// Such an entry has no pid to check; its start event replaces it.
		// A container created but never started has no IPs and no
		// processes, so it can be nobody's identity by mistake.
		if r.State.Status != "created" {
			return nil, false
		}
		return x.startingEntry(r), true
	}
	c := Container{
		ID:   r.ID,
		Name: strings.TrimPrefix(r.Name, "/"),
		Pid:  r.State.Pid,
	}
	if r.Config != nil {
		c.Labels = maps.Clone(r.Config.Labels)
	}
	if r.HostConfig != nil {
		c.NetworkMode = string(r.HostConfig.NetworkMode)
		c.HostNetwork = r.HostConfig.NetworkMode.IsHost()
	}
	shared := r.HostConfig != nil && r.HostConfig.NetworkMode.IsContainer()
	if r.NetworkSettings != nil && !c.HostNetwork && !shared {
		c.IPs = endpointIPs(r.NetworkSettings.Networks)
	}
	e := &entry{c: c}
	p, err := cgroup.ProcPath(c.Pid)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, false // exited between inspect and now
	case err != nil:
		x.log.Debug("no cgroup for container", zap.String("container_id", c.ID), zap.Error(err))
	case !strings.Contains(p, c.ID):
		// The pid is not in a cgroup named after the container: we do not
		// share the engine's pid namespace, or the pid was reused. Either
		// way the path would be wrong.
		x.log.Debug("container pid cgroup does not name the container",
			zap.String("container_id", c.ID), zap.String("path", p))
	default:
		e.checkLive = true
		c.CgroupPath = containerCgroup(p, c.ID)
		if x.mount != "" {
			if id, err := cgroup.ID(filepath.Join(x.mount, c.CgroupPath)); err == nil {
				c.CgroupID = id
			} else {
				x.log.Debug("no cgroup id for container", zap.String("container_id", c.ID), zap.Error(err))
			}
		}
		e.c = c
	}
	return e, true
}

// endpointIPs returns the sorted, distinct addresses of a container's
// network endpoints.
func endpointIPs(networks map[string]*network.EndpointSettings) []netip.Addr {
	var ips []netip.Addr
	for _, ep := range networks {
		if ep == nil {
			continue
		}
		for _, s := range []string{ep.IPAddress, ep.GlobalIPv6Address} {
			if a, err := netip.ParseAddr(s); err == nil && a.IsValid() && !a.IsUnspecified() {
				ips = append(ips, a.Unmap())
			}
		}
	}
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(ips)
}

// startingEntry describes a container dockerd has not marked running yet:
// identity and addresses, no pid and no cgroup (ByCgroupID supplies the
// cgroup from the caller's own path).
func (x *Index) startingEntry(r container.InspectResponse) *entry {
	c := Container{ID: r.ID, Name: strings.TrimPrefix(r.Name, "/")}
	if r.Config != nil {
		c.Labels = maps.Clone(r.Config.Labels)
	}
	if r.HostConfig != nil {
		c.NetworkMode = string(r.HostConfig.NetworkMode)
		c.HostNetwork = r.HostConfig.NetworkMode.IsHost()
	}
	if r.NetworkSettings != nil && !c.HostNetwork && (r.HostConfig == nil || !r.HostConfig.NetworkMode.IsContainer()) {
		c.IPs = endpointIPs(r.NetworkSettings.Networks)
	}
	return &entry{c: c}
}

// containerCgroup trims a process's cgroup path to the container's own
// cgroup: the init process may have moved into a sub-cgroup.
func containerCgroup(p, id string) string {
	parts := strings.Split(p, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if cid, ok := containerIDOfComponent(parts[i]); ok && cid == id {
			return strings.Join(parts[:i+1], "/")
		}
	}
	return p
}

// upsert stores e unless the container was removed after v0 (the version
// before e was inspected): then e describes a container that has died since.
func (x *Index) upsert(e *entry, v0 uint64) bool {
	x.mu.Lock()
	if t, ok := x.tombstones[e.c.ID]; ok && t > v0 {
		x.mu.Unlock()
		return false
	}
	old, existed := x.byID[e.c.ID]
	if existed {
		x.unindexLocked(old)
	}
	delete(x.tombstones, e.c.ID)
	x.version++
	e.ver = x.version
	x.byID[e.c.ID] = e
	for _, a := range e.c.IPs {
		x.byIP[a] = append(x.byIP[a], e.c.ID)
	}
	if e.c.CgroupID != 0 {
		x.byCg[e.c.CgroupID] = e.c.ID
		delete(x.negCg, e.c.CgroupID)
	}
	n := len(x.byID)
	x.mu.Unlock()
	x.m.containers.Set(float64(n))
	if !existed {
		x.log.Debug("container added", zap.String("container", e.c.Name), zap.String("container_id", e.c.ID),
			zap.Uint64("cgroup_id", e.c.CgroupID))
		if x.cfg.OnStart != nil {
			x.cfg.OnStart(e.c.clone())
		}
	}
	return true
}

// remove drops a container and all its index entries at once.
func (x *Index) remove(id, why string) {
	x.mu.Lock()
	x.version++
	x.tombstones[id] = x.version
	if len(x.tombstones) > maxTombstones {
		for k, v := range x.tombstones {
			if v+maxTombstones < x.version {
				delete(x.tombstones, k)
			}
		}
	}
	e, ok := x.byID[id]
	if ok {
		x.unindexLocked(e)
		delete(x.byID, id)
	}
	n := len(x.byID)
	x.mu.Unlock()
	if !ok {
		return
	}
	x.m.containers.Set(float64(n))
	x.log.Debug("container removed", zap.String("container", e.c.Name), zap.String("container_id", id),
		zap.String("reason", why))
	if x.cfg.OnRemove != nil {
		x.cfg.OnRemove(e.c.clone())
	}
}

func (x *Index) unindexLocked(e *entry) {
	for _, a := range e.c.IPs {
		ids := slices.DeleteFunc(x.byIP[a], func(s string) bool { return s == e.c.ID })
		if len(ids) == 0 {
			delete(x.byIP, a)
		} else {
			x.byIP[a] = ids
		}
	}
	if e.c.CgroupID != 0 && x.byCg[e.c.CgroupID] == e.c.ID {
		delete(x.byCg, e.c.CgroupID)
	}
	for k, v := range x.subCg {
		if v == e.c.ID {
			delete(x.subCg, k)
		}
	}
}

// Run syncs the index and follows the engine's events until ctx ends,
// reconnecting when the engine goes away. It returns nil when ctx is
// cancelled.
func (x *Index) Run(ctx context.Context) error {
	backoff := backoffMin
	connected := false // whether a session has succeeded before
	for {
		start := time.Now()
		err := x.session(ctx, func() {
			if connected {
				x.m.reconnects.Inc()
				x.log.Info("docker index resynced after reconnect", zap.Duration("duration", time.Since(start)),
					zap.Int("containers", x.Len()))
			} else {
				x.log.Info("docker index synced", zap.Duration("duration", time.Since(start)),
					zap.Int("containers", x.Len()))
			}
			connected = true
			backoff = backoffMin
			x.markSynced()
		})
		if ctx.Err() != nil {
			return nil
		}
		x.log.Warn("docker event stream lost; reconnecting", zap.Error(err), zap.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, backoffMax)
	}
}

func (x *Index) markSynced() {
	x.syncedOnce.Do(func() {
		x.synced.Store(true)
		x.m.synced.Set(1)
		close(x.syncedCh)
	})
}

// session subscribes to events, syncs fully, calls onSynced, then applies
// events until the stream breaks. Subscribing before listing means nothing
// that happens during the list is missed: it is queued in the stream.
func (x *Index) session(ctx context.Context, onSynced func()) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The client gives no signal once the daemon has registered the
	// subscription, so ask for a replay from just before the list: events
	// are idempotent here (die removes, start re-inspects), replaying a few
	// is harmless and missing one is not.
	since := time.Now().Add(-time.Second)
	msgs, errs := x.cli.Events(sctx, events.ListOptions{
		Since: fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
		Filters: filters.NewArgs(
			filters.Arg("type", string(events.ContainerEventType)),
			filters.Arg("type", string(events.NetworkEventType)),
		)})
	if err := x.sync(sctx, true); err != nil {
		return err
	}
	onSynced()
	for {
		select {
		case err := <-errs:
			if err == nil {
				err = errors.New("event stream closed")
			}
			return fmt.Errorf("docker events from %s: %w", x.cli.DaemonHost(), err)
		case m := <-msgs:
			if x.beforeEvent != nil {
				x.beforeEvent(m)
			}
			x.handle(sctx, m)
		}
	}
}

// actionLabel names an action for the events metric; unlisted actions
// count as "other" so the label set stays bounded.
func actionLabel(a events.Action) string {
	switch a {
	case events.ActionStart, events.ActionRestart, events.ActionUnPause, events.ActionRename,
		events.ActionUpdate, events.ActionDie, events.ActionStop, events.ActionKill,
		events.ActionDestroy, events.ActionConnect, events.ActionDisconnect, events.ActionCreate:
		return string(a)
	}
	return "other"
}

func (x *Index) handle(ctx context.Context, m events.Message) {
	x.m.events.WithLabelValues(actionLabel(m.Action)).Inc()

	id := m.Actor.ID
	if m.Type == events.NetworkEventType {
		id = m.Actor.Attributes["container"]
		if id == "" {
			return
		}
	} else if m.Type != events.ContainerEventType {
		return
	}
	switch m.Action {
	case events.ActionDie, events.ActionStop, events.ActionDestroy:
		// The identity goes before the address can be reused.
		x.remove(id, string(m.Action))
	case events.ActionKill:
		// SIGKILL cannot be caught: the container is dying. Other signals
		// may be handled and leave it running; its die event follows if not.
		if s := m.Actor.Attributes["signal"]; s == "9" || s == "SIGKILL" || s == "KILL" {
			x.remove(id, "kill")
		}
	case events.ActionStart, events.ActionRestart, events.ActionUnPause, events.ActionRename,
		events.ActionUpdate, events.ActionConnect, events.ActionDisconnect:
		ictx, cancel := context.WithTimeout(ctx, inspectTimeout)
		defer cancel()
		if _, _, err := x.inspectAndApply(ictx, id); err != nil && ctx.Err() == nil {
			x.log.Warn("inspect after event", zap.String("container_id", id),
				zap.String("action", string(m.Action)), zap.Error(err))
		}
	}
}
