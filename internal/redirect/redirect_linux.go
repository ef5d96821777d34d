//go:build linux

package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
)

// attachment is one program attached to the cgroup through a pinned link.
type attachment struct {
	pin    string // file name in the pin dir
	attach ebpf.AttachType
	prog   func(*pdrObjects) *ebpf.Program
}

var attachments = []attachment{
	{"link_connect4", ebpf.AttachCGroupInet4Connect, func(o *pdrObjects) *ebpf.Program { return o.PdrConnect4 }},
	{"link_connect6", ebpf.AttachCGroupInet6Connect, func(o *pdrObjects) *ebpf.Program { return o.PdrConnect6 }},
	{"link_getpeername4", ebpf.AttachCgroupInet4GetPeername, func(o *pdrObjects) *ebpf.Program { return o.PdrGetpeername4 }},
	{"link_getpeername6", ebpf.AttachCgroupInet6GetPeername, func(o *pdrObjects) *ebpf.Program { return o.PdrGetpeername6 }},
	{"link_sockops", ebpf.AttachCGroupSockOps, func(o *pdrObjects) *ebpf.Program { return o.PdrSockops }},
}

// pinnedMaps are the map pins (names from the C source, pinned by name).
var pinnedMaps = []string{pdrMapPdrConf, pdrMapPdrCounters, pdrMapPdrExempt, pdrMapPdrGuard, pdrMapPdrRecords, pdrMapPdrSocks}

// Redirector owns the loaded programs and maps of one attachment.
type Redirector struct {
	cfg        Config
	log        *zap.Logger
	objs       pdrObjects
	links      []link.Link
	hostCookie uint64

	reg       prometheus.Registerer
	collector *collector

	closeOnce sync.Once
	closeErr  error
}

// New loads the programs (adopting maps and links already pinned in
// cfg.PinDir by an earlier run), writes the configuration and attaches to
// cfg.CgroupPath. Until New returns, a pinned attachment keeps refusing
// metadata connections, so a restart never opens a window to the real IMDS.
func New(cfg Config, log *zap.Logger, reg prometheus.Registerer) (*Redirector, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.CgroupPath == "" {
		mnt, err := cgroup.Mount()
		if err != nil {
			return nil, fmt.Errorf("redirect: attach point: %w", err)
		}
		cfg.CgroupPath = mnt
	}
	if err := checkCgroup2(cfg.CgroupPath); err != nil {
		return nil, err
	}
	if cfg.ExemptCgroups == nil {
		id, err := ownCgroupID()
		if err != nil {
			return nil, fmt.Errorf("redirect: exempt own cgroup: %w", err)
		}
		cfg.ExemptCgroups = []uint64{id}
	}
	attachID, err := cgroup.ID(cfg.CgroupPath)
	if err != nil {
		return nil, fmt.Errorf("redirect: %w", err)
	}
	for _, id := range cfg.ExemptCgroups {
		if id == attachID || id == 1 {
			log.Warn("exempt cgroup is the attach point or the cgroup2 root: its own processes bypass the redirect and the upstream guard",
				zap.Uint64("cgroup_id", id))
		}
	}

	hostCookie, err := netnsCookie()
	if err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("redirect: raise memlock limit: %w", explain(err))
	}
	if err := ensurePinDir(cfg.PinDir); err != nil {
		return nil, err
	}

	r := &Redirector{cfg: cfg, log: log, hostCookie: hostCookie, reg: reg}
	if err := r.load(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			r.closeFDs()
		}
	}()

	// Refuse while starting (a crashed run may have left its targets),
	// then exemptions and guard, targets last: a half-configured
	// redirector refuses rather than redirects.
	if err := r.setTargets(false); err != nil {
		return nil, err
	}
	if err := r.configure(); err != nil {
		return nil, err
	}
	if err := r.attach(attachID); err != nil {
		return nil, err
	}
	if !cfg.NoInterface && (cfg.NSTarget.IsValid() || cfg.NSTarget6.IsValid()) {
		if err := ensureInterface(cfg.Interface, cfg.NSTarget.Addr(), cfg.NSTarget6.Addr()); err != nil {
			return nil, err
		}
	}
	if err := r.setTargets(true); err != nil {
		return nil, err
	}
	if reg != nil {
		r.collector = newCollector(r.objs.PdrCounters)
		if err := reg.Register(r.collector); err != nil {
			return nil, fmt.Errorf("redirect: register metrics: %w", err)
		}
	}
	ok = true
	log.Info("eBPF redirect ready",
		zap.String("cgroup", cfg.CgroupPath), zap.String("pin_dir", cfg.PinDir),
		zap.Stringers("listen", r.Listen()), zap.Uint64s("exempt", cfg.ExemptCgroups))
	return r, nil
}

// load loads the collection, reusing pinned maps. A pinned map whose
// layout differs (another version) is unpinned and recreated: programs
// still attached keep their old maps until attach() swaps them.
func (r *Redirector) load() error {
	spec, err := loadPdr()
	if err != nil {
		return fmt.Errorf("redirect: parse embedded eBPF object: %w", err)
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: r.cfg.PinDir}}
	err = spec.LoadAndAssign(&r.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		for _, name := range pinnedMaps {
			path := filepath.Join(r.cfg.PinDir, name)
			m, lerr := ebpf.LoadPinnedMap(path, nil)
			if lerr != nil {
				continue
			}
			if spec.Maps[name].Compatible(m) != nil {
				r.log.Warn("pinned map has another layout; recreating it", zap.String("map", name))
				_ = m.Unpin()
			}
			m.Close()
		}
		err = spec.LoadAndAssign(&r.objs, opts)
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("redirect: load eBPF programs: %+v", ve)
		}
		return fmt.Errorf("redirect: load eBPF programs (pin dir %s): %w", r.cfg.PinDir, explain(err))
	}
	return nil
}

// configure writes the exempt set and the guard, replacing what an earlier
// run left in the pinned maps.
func (r *Redirector) configure() error {
	want := map[uint64]bool{}
	for _, id := range r.cfg.ExemptCgroups {
		want[id] = true
	}
	var id uint64
	var one uint8
	var stale []uint64
	it := r.objs.PdrExempt.Iterate()
	for it.Next(&id, &one) {
		if !want[id] {
			stale = append(stale, id)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("redirect: read exempt cgroups: %w", err)
	}
	for _, id := range stale {
		_ = r.objs.PdrExempt.Delete(id)
	}
	for id := range want {
		if err := r.objs.PdrExempt.Put(id, uint8(1)); err != nil {
			return fmt.Errorf("redirect: exempt cgroup %d: %w", id, err)
		}
	}

	wantG := map[pdrPdrAddr]bool{}
	for _, g := range r.cfg.GuardAddrs {
		wantG[addrKey(g)] = true
	}
	var k pdrPdrAddr
	var staleG []pdrPdrAddr
	it = r.objs.PdrGuard.Iterate()
	for it.Next(&k, &one) {
		if !wantG[k] {
			staleG = append(staleG, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("redirect: read guard: %w", err)
	}
	for _, k := range staleG {
		_ = r.objs.PdrGuard.Delete(k)
	}
	for k := range wantG {
		if err := r.objs.PdrGuard.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("redirect: guard %s: %w", fromKey(k), err)
		}
	}
	return nil
}

// attach adopts the pinned links (swapping in the freshly loaded programs
// atomically with link.Update, so there is never a moment without a
// program) or attaches and pins new ones.
func (r *Redirector) attach(cgroupID uint64) error {
	for _, a := range attachments {
		path := filepath.Join(r.cfg.PinDir, a.pin)
		prog := a.prog(&r.objs)
		l, err := link.LoadPinnedLink(path, nil)
		switch {
		case err == nil:
			if cg, oldTag := linkTarget(l); cg == cgroupID {
				if err := l.Update(prog); err != nil {
					l.Close()
					return fmt.Errorf("redirect: replace program of pinned %s: %w", path, explain(err))
				}
				newTag := ""
				if info, err := prog.Info(); err == nil {
					newTag = info.Tag
				}
				r.log.Info("adopted pinned link", zap.String("link", a.pin),
					zap.Bool("program_changed", oldTag != newTag), zap.String("tag", newTag))
				r.links = append(r.links, l)
				continue
			} else {
				// Pinned by a run with another attach point: move it.
				r.log.Warn("pinned link is attached elsewhere; moving it", zap.String("link", a.pin),
					zap.Uint64("old_cgroup_id", cg), zap.Uint64("cgroup_id", cgroupID))
				_ = l.Unpin()
				_ = l.Detach()
				l.Close()
			}
		case errors.Is(err, os.ErrNotExist):
		default:
			return fmt.Errorf("redirect: load pinned link %s: %w", path, explain(err))
		}
		l, err = link.AttachCgroup(link.CgroupOptions{Path: r.cfg.CgroupPath, Attach: a.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("redirect: attach %s to %s: %w", a.pin, r.cfg.CgroupPath, explain(err))
		}
		if err := l.Pin(path); err != nil {
			l.Close()
			return fmt.Errorf("redirect: pin %s (needs bpf_link, Linux 5.7+): %w", path, explain(err))
		}
		r.links = append(r.links, l)
	}
	return nil
}

// linkTarget returns the cgroup id a link is attached to and its program's
// tag ("" when unknown).
func linkTarget(l link.Link) (uint64, string) {
	info, err := l.Info()
	if err != nil {
		return 0, ""
	}
	var cg uint64
	if c := info.Cgroup(); c != nil {
		cg = c.CgroupId
	}
	tag := ""
	if p, err := ebpf.NewProgramFromID(info.Program); err == nil {
		if pi, err := p.Info(); err == nil {
			tag = pi.Tag
		}
		p.Close()
	}
	return cg, tag
}

// setTargets writes the proxy targets (on) or clears them (off: fail
// closed, metadata connections are refused).
func (r *Redirector) setTargets(on bool) error {
	c := pdrPdrConfig{HostNetnsCookie: r.hostCookie}
	if on {
		c.Host4.Addr, c.Host4.Port = be32(r.cfg.HostTarget.Addr()), be16(r.cfg.HostTarget.Port())
		if r.cfg.NSTarget.IsValid() {
			c.Ns4.Addr, c.Ns4.Port = be32(r.cfg.NSTarget.Addr()), be16(r.cfg.NSTarget.Port())
		}
		if r.cfg.HostTarget6.IsValid() {
			c.Host6.Addr, c.Host6.Port = be128(r.cfg.HostTarget6.Addr()), be16(r.cfg.HostTarget6.Port())
		}
		if r.cfg.NSTarget6.IsValid() {
			c.Ns6.Addr, c.Ns6.Port = be128(r.cfg.NSTarget6.Addr()), be16(r.cfg.NSTarget6.Port())
		}
	}
	if err := r.objs.PdrConf.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("redirect: write targets: %w", err)
	}
	return nil
}

// Lookup returns and deletes the record of the redirected connection whose
// client address is peer (the remote address of the accepted connection).
// ErrNoRecord: the connection did not come through the redirect, or was
// already looked up. ErrConflict: two sockets claimed that address.
func (r *Redirector) Lookup(peer netip.AddrPort) (Record, error) {
	key := addrKey(peer)
	var v pdrPdrRecord
	err := r.objs.PdrRecords.LookupAndDelete(&key, &v)
	if errors.Is(err, ebpf.ErrNotSupported) {
		// Kernels before 5.14 cannot look up and delete hash entries in
		// one call.
		if err = r.objs.PdrRecords.Lookup(&key, &v); err == nil {
			err = r.objs.PdrRecords.Delete(&key)
		}
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		r.collector.lookup("miss")
		return Record{}, ErrNoRecord
	}
	if err != nil {
		r.collector.lookup("error")
		return Record{}, fmt.Errorf("look up redirect record for %s: %w", peer, err)
	}
	if v.Flags&uint32(pdrPdrFlagPDR_F_CONFLICT) != 0 {
		r.collector.lookup("conflict")
		return Record{}, ErrConflict
	}
	r.collector.lookup("hit")
	return toRecord(v), nil
}

// Listen returns the addresses the proxy must listen on.
func (r *Redirector) Listen() []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range []netip.AddrPort{r.cfg.HostTarget, r.cfg.NSTarget, r.cfg.HostTarget6, r.cfg.NSTarget6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// Status reads the pinned state (links, targets, counters).
func (r *Redirector) Status() (Status, error) { return ReadStatus(r.cfg.PinDir) }

// Close clears the targets, so metadata connections are refused until the
// next New, and closes this process's handles. Programs, links and maps
// stay pinned and attached.
func (r *Redirector) Close() error {
	r.closeOnce.Do(func() {
		r.closeErr = r.setTargets(false)
		if r.reg != nil && r.collector != nil {
			r.reg.Unregister(r.collector)
		}
		r.closeFDs()
		r.log.Info("eBPF redirect closed; metadata connections are refused until restart",
			zap.String("pin_dir", r.cfg.PinDir))
	})
	return r.closeErr
}

func (r *Redirector) closeFDs() {
	for _, l := range r.links {
		l.Close()
	}
	r.links = nil
	r.objs.Close()
}

// Detach removes the links (detaching the programs even if another process
// still holds them) and the pinned maps, and the pin dir if it is then
// empty. The dummy interface is left in place.
func Detach(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	var errs []error
	for _, a := range attachments {
		path := filepath.Join(pinDir, a.pin)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", path, err))
			continue
		}
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", path, err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
		l.Close()
	}
	for _, name := range pinnedMaps {
		path := filepath.Join(pinDir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", path, err))
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pin dir %s: %w", pinDir, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redirect: detach: %w", err)
	}
	return nil
}

// ReadStatus reports what is pinned in pinDir: attachments, targets,
// exemptions, guard, pending records and counters. It needs no running
// daemon.
func ReadStatus(pinDir string) (Status, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	s := Status{PinDir: pinDir}
	for _, a := range attachments {
		ls := LinkStatus{Name: a.pin}
		path := filepath.Join(pinDir, a.pin)
		l, err := link.LoadPinnedLink(path, nil)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			ls.Err = err.Error()
		default:
			if info, err := l.Info(); err != nil {
				ls.Err = err.Error()
			} else {
				ls.Attached = true
				ls.LinkID = uint32(info.ID)
				ls.ProgramID = uint32(info.Program)
				ls.CgroupID, ls.ProgramTag = linkTarget(l)
			}
			l.Close()
		}
		s.Links = append(s.Links, ls)
	}

	open := func(name string) (*ebpf.Map, error) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("redirect: status: open map %s in %s: %w", name, pinDir, explain(err))
		}
		return m, nil
	}
	conf, err := open(pdrMapPdrConf)
	if err != nil {
		return s, err
	}
	defer conf.Close()
	var c pdrPdrConfig
	if err := conf.Lookup(uint32(0), &c); err != nil {
		return s, fmt.Errorf("redirect: status: read targets: %w", err)
	}
	s.HostNetnsCookie = c.HostNetnsCookie
	s.HostTarget = target4(c.Host4.Addr, c.Host4.Port)
	s.NSTarget = target4(c.Ns4.Addr, c.Ns4.Port)
	s.HostTarget6 = target6(c.Host6.Addr, c.Host6.Port)
	s.NSTarget6 = target6(c.Ns6.Addr, c.Ns6.Port)

	ex, err := open(pdrMapPdrExempt)
	if err != nil {
		return s, err
	}
	defer ex.Close()
	var id uint64
	var one uint8
	for it := ex.Iterate(); it.Next(&id, &one); {
		s.Exempt = append(s.Exempt, id)
	}

	g, err := open(pdrMapPdrGuard)
	if err != nil {
		return s, err
	}
	defer g.Close()
	var k pdrPdrAddr
	for it := g.Iterate(); it.Next(&k, &one); {
		s.Guard = append(s.Guard, fromKey(k))
	}

	recs, err := open(pdrMapPdrRecords)
	if err != nil {
		return s, err
	}
	defer recs.Close()
	var rec pdrPdrRecord
	for it := recs.Iterate(); it.Next(&k, &rec) && s.PendingRecords <= int(recs.MaxEntries()); {
		s.PendingRecords++
	}

	cm, err := open(pdrMapPdrCounters)
	if err != nil {
		return s, err
	}
	defer cm.Close()
	s.Counters, err = readCounters(cm)
	return s, err
}

// readCounters sums the per-CPU counters.
func readCounters(m *ebpf.Map) (Counters, error) {
	var c Counters
	dst := map[pdrPdrCounter]*uint64{
		pdrPdrCounterPDR_C_REDIRECTED:    &c.Redirected,
		pdrPdrCounterPDR_C_EXEMPT:        &c.Exempt,
		pdrPdrCounterPDR_C_REFUSED:       &c.Refused,
		pdrPdrCounterPDR_C_GUARD_REFUSED: &c.GuardRefused,
		pdrPdrCounterPDR_C_RECORDED:      &c.Recorded,
		pdrPdrCounterPDR_C_CONFLICT:      &c.Conflict,
		pdrPdrCounterPDR_C_PEERNAME:      &c.Peername,
	}
	for idx, p := range dst {
		var per []uint64
		if err := m.Lookup(uint32(idx), &per); err != nil {
			return c, fmt.Errorf("redirect: read counter %d: %w", idx, err)
		}
		for _, v := range per {
			*p += v
		}
	}
	return c, nil
}

// toRecord converts the kernel's record.
func toRecord(v pdrPdrRecord) Record {
	orig := fromKey(v.Orig)
	if v.Flags&uint32(pdrPdrFlagPDR_F_V6SOCKET) == 0 {
		orig = netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port())
	}
	tgt := fromKey(v.Target)
	return Record{
		CgroupID:    v.CgroupId,
		NetnsCookie: v.NetnsCookie,
		HostNetns:   v.Flags&uint32(pdrPdrFlagPDR_F_HOST_NETNS) != 0,
		OrigDst:     orig,
		Target:      netip.AddrPortFrom(tgt.Addr().Unmap(), tgt.Port()),
	}
}

// addrKey encodes an address as the kernel keys it: IPv4 as IPv4-mapped
// IPv6, address and port in network byte order.
func addrKey(a netip.AddrPort) pdrPdrAddr {
	return pdrPdrAddr{Addr: be128(a.Addr()), Port: be16(a.Port())}
}

func fromKey(k pdrPdrAddr) netip.AddrPort {
	var b [16]byte
	for i, w := range k.Addr {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], k.Port)
	return netip.AddrPortFrom(netip.AddrFrom16(b), binary.BigEndian.Uint16(p[:]))
}

// be128 returns a's 16 bytes (IPv4 mapped) as the words the kernel reads.
func be128(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// be32 returns an IPv4 address as the __be32 the kernel reads.
func be32(a netip.Addr) uint32 {
	b := a.Unmap().As4()
	return binary.NativeEndian.Uint32(b[:])
}

// be16 returns a port as the __be16 the kernel reads.
func be16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func target4(addr uint32, port uint16) netip.AddrPort {
	if addr == 0 || port == 0 {
		return netip.AddrPort{}
	}
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], addr)
	return netip.AddrPortFrom(netip.AddrFrom4(b), be16(port))
}

func target6(addr [4]uint32, port uint16) netip.AddrPort {
	if port == 0 {
		return netip.AddrPort{}
	}
	return fromKey(pdrPdrAddr{Addr: addr, Port: port})
}

// netnsCookie returns the cookie of this process's network namespace,
// which the kernel compares with the caller's to pick the target.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("redirect: netns cookie: socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("redirect: netns cookie (SO_NETNS_COOKIE needs Linux 5.14+): %w", err)
	}
	return c, nil
}

// ownCgroupID returns the cgroup2 id of this process.
func ownCgroupID() (uint64, error) {
	mnt, err := cgroup.Mount()
	if err != nil {
		return 0, err
	}
	p, err := cgroup.ProcPath(os.Getpid())
	if err != nil {
		return 0, err
	}
	return cgroup.ID(filepath.Join(mnt, p))
}

// ErrNoCgroup2Dir means the attach point is not a cgroup2 directory.
var ErrNoCgroup2Dir = errors.New("not a cgroup2 directory")

func checkCgroup2(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("redirect: attach point %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("redirect: attach point %s: %w", dir, ErrNoCgroup2Dir)
	}
	return nil
}

// ErrNoBPFFS means the pin dir is not on a bpf filesystem and none could
// be mounted.
var ErrNoBPFFS = errors.New("not on a bpf filesystem")

var mountMu sync.Mutex

// ensurePinDir creates dir on a bpffs, mounting bpffs at /sys/fs/bpf when
// nothing is mounted there (Debian does not mount it by default).
func ensurePinDir(dir string) error {
	mountMu.Lock()
	defer mountMu.Unlock()
	const bpffs = "/sys/fs/bpf"
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(existing, &st); err != nil {
		return fmt.Errorf("redirect: pin dir %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		if filepath.Clean(dir) != bpffs && !isUnder(dir, bpffs) {
			return fmt.Errorf("redirect: pin dir %s: %w", dir, ErrNoBPFFS)
		}
		if err := os.MkdirAll(bpffs, 0o755); err != nil {
			return fmt.Errorf("redirect: create %s: %w", bpffs, err)
		}
		if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("redirect: mount bpffs at %s: %w", bpffs, explain(err))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("redirect: create pin dir %s: %w", dir, err)
	}
	return nil
}

func isUnder(p, dir string) bool {
	rel, err := filepath.Rel(dir, filepath.Clean(p))
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

// ErrPermission is wrapped when the kernel refuses for lack of privilege.
var ErrPermission = errors.New("permission denied: needs root, or CAP_BPF + CAP_NET_ADMIN (+ CAP_SYS_ADMIN to mount bpffs)")

// explain adds what the operator can do about common kernel errors.
func explain(err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%w: %w", ErrPermission, err)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("kernel lacks a needed eBPF feature (Linux 5.14+ with cgroup2): %w", err)
	}
	return err
}
