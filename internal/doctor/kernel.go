package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// hostProbes are the questions asked of the running kernel; tests replace
// them. The real ones are in host_linux.go.
type hostProbes struct {
	uname       func() (release, machine string, err error)
	procStatus  func() (io.ReadCloser, error) // /proc/self/status
	mountinfo   func() (io.ReadCloser, error) // /proc/self/mountinfo
	programType func(ebpf.ProgramType) error
	attachType  func(ebpf.ProgramType, ebpf.AttachType) error
	helper      func(ebpf.ProgramType, asm.BuiltinFunc) error
	mapType     func(ebpf.MapType) error
	netnsCookie func() error // SO_NETNS_COOKIE
	btf         func() error // /sys/kernel/btf/vmlinux readable
	cgroup2     func() (string, error)
	cgroupID    func(dir string) (uint64, error)
	procCgroup  func(pid int) (string, error)
}

// minKernel is the oldest kernel the redirect runs on: the daemon reads
// its host network namespace cookie with SO_NETNS_COOKIE (5.14); the
// program types, getpeername hooks (5.8) and cgroup bpf_links (5.7) are
// older.
const (
	minKernel     = 5<<16 | 14<<8
	minKernelText = "5.14"
)

// parseRelease turns a uname release ("6.18.44-fc-v1252", "5.10.0-28-amd64")
// into LINUX_VERSION_CODE form.
func parseRelease(rel string) (uint32, error) {
	head := rel
	if i := strings.IndexFunc(rel, func(r rune) bool { return r != '.' && (r < '0' || r > '9') }); i >= 0 {
		head = rel[:i]
	}
	parts := strings.Split(head, ".")
	if len(parts) < 2 {
		return 0, fmt.Errorf("parse kernel release %q: want major.minor", rel)
	}
	var v [3]uint64
	for i := 0; i < len(parts) && i < 3; i++ {
		n, err := strconv.ParseUint(parts[i], 10, 8)
		if err != nil && i == 2 {
			n = 255 // a patch level above 255 is clamped, as the kernel does
		} else if err != nil {
			return 0, fmt.Errorf("parse kernel release %q: %w", rel, err)
		}
		v[i] = n
	}
	return uint32(v[0]<<16 | v[1]<<8 | v[2]), nil
}

func (s *state) checkKernel(context.Context) Result {
	h := s.deps.host
	rel, machine, err := h.uname()
	if err != nil {
		return Result{Status: Warn, Detail: "uname: " + err.Error(), Fix: "the doctor needs Linux; the daemon runs only there"}
	}
	code, perr := parseRelease(rel)
	if perr == nil {
		s.mu.Lock()
		s.kernelCode = code
		s.mu.Unlock()
	}
	detail := fmt.Sprintf("%s (%s)", rel, machine)
	if !s.ebpf() {
		return ok("%s; --redirect=off needs no kernel features", detail)
	}
	if perr != nil {
		return Result{Status: Warn, Detail: detail + ": " + perr.Error(),
			Fix: "cannot tell the kernel version; the checks below probe the features directly"}
	}
	if code < minKernel {
		return Result{Status: Fail, Detail: fmt.Sprintf("%s: the eBPF redirect needs Linux %s or newer", detail, minKernelText),
			Fix: "upgrade the kernel (Debian 12 ships 6.1), or run with --redirect=off --identity=ip and point SDKs at the proxy with AWS_EC2_METADATA_SERVICE_ENDPOINT (identity by source IP is weaker)"}
	}
	if err := h.netnsCookie(); err != nil {
		return Result{Status: Fail, Detail: detail + ": SO_NETNS_COOKIE: " + err.Error(),
			Fix: "the kernel cannot report network namespace cookies (Linux 5.14+ with CONFIG_NET_NS); upgrade it or run with --redirect=off"}
	}
	return ok("%s", detail)
}

// probeOutcome classifies one feature probe.
type probeOutcome int

const (
	probeOK probeOutcome = iota
	probeMissing
	probeDenied
	probeError
)

func classify(err error) probeOutcome {
	switch {
	case err == nil:
		return probeOK
	case errors.Is(err, ebpf.ErrNotSupported):
		return probeMissing
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return probeDenied
	}
	return probeError
}

// probeSet runs named probes and folds them into one result.
type probeSet struct {
	ok, missing, denied, failed []string
}

func (p *probeSet) add(name string, err error) {
	switch classify(err) {
	case probeOK:
		p.ok = append(p.ok, name)
	case probeMissing:
		p.missing = append(p.missing, name)
	case probeDenied:
		p.denied = append(p.denied, name)
	default:
		p.failed = append(p.failed, fmt.Sprintf("%s (%v)", name, err))
	}
}

func (p *probeSet) result(what, fixMissing string) Result {
	switch {
	case len(p.missing) > 0:
		return Result{Status: Fail, Detail: fmt.Sprintf("the kernel lacks %s: %s", what, strings.Join(p.missing, ", ")), Fix: fixMissing}
	case len(p.denied) > 0:
		return Result{Status: Warn, Detail: fmt.Sprintf("cannot probe %s without privileges: %s", what, strings.Join(p.denied, ", ")),
			Fix: "run the doctor as root (or with CAP_BPF) to probe the kernel"}
	case len(p.failed) > 0:
		return Result{Status: Warn, Detail: fmt.Sprintf("probing %s failed: %s", what, strings.Join(p.failed, "; ")),
			Fix: "unexpected probe error; the daemon's start-up log shows whether loading works"}
	}
	return ok("%s", strings.Join(p.ok, ", "))
}

const fixKernelBPF = "use a kernel built with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF (Linux " + minKernelText + "+; stock Debian 12, Ubuntu 22.04 and RHEL 9 kernels have them), or run with --redirect=off"

func (s *state) checkPrograms(context.Context) Result {
	if !s.ebpf() {
		return skip("--redirect=off")
	}
	h := s.deps.host
	var p probeSet
	p.add("cgroup_sock_addr", h.programType(ebpf.CGroupSockAddr))
	p.add("sock_ops", h.programType(ebpf.SockOps))
	for _, a := range []struct {
		name string
		t    ebpf.AttachType
	}{
		{"connect4", ebpf.AttachCGroupInet4Connect},
		{"connect6", ebpf.AttachCGroupInet6Connect},
		{"getpeername4", ebpf.AttachCgroupInet4GetPeername},
		{"getpeername6", ebpf.AttachCgroupInet6GetPeername},
	} {
		p.add(a.name, h.attachType(ebpf.CGroupSockAddr, a.t))
	}
	return p.result("eBPF program or attach types", fixKernelBPF)
}

func (s *state) checkHelpers(context.Context) Result {
	if !s.ebpf() {
		return skip("--redirect=off")
	}
	h := s.deps.host
	var p probeSet
	for _, f := range []asm.BuiltinFunc{asm.FnGetCurrentCgroupId, asm.FnGetNetnsCookie, asm.FnGetSocketCookie} {
		p.add(helperName(f)+"@sock_addr", h.helper(ebpf.CGroupSockAddr, f))
	}
	for _, f := range []asm.BuiltinFunc{asm.FnGetSocketCookie, asm.FnSockOpsCbFlagsSet} {
		p.add(helperName(f)+"@sock_ops", h.helper(ebpf.SockOps, f))
	}
	for _, m := range []ebpf.MapType{ebpf.Hash, ebpf.Array, ebpf.LRUHash, ebpf.PerCPUArray} {
		p.add(strings.ToLower(m.String())+" map", h.mapType(m))
	}
	return p.result("eBPF helpers or map types", fixKernelBPF)
}

// helperName renders asm.FnGetNetnsCookie as get_netns_cookie.
func helperName(f asm.BuiltinFunc) string {
	n := strings.TrimPrefix(f.String(), "Fn")
	var b strings.Builder
	for i, r := range n {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *state) checkBTF(context.Context) Result {
	if err := s.deps.host.btf(); err != nil {
		// The programs use fixed context offsets and no CO-RE
		// relocations, so they load without kernel BTF.
		return Result{Status: Warn, Detail: "/sys/kernel/btf/vmlinux: " + err.Error() + " (not needed by the current programs, which use no CO-RE relocations)",
			Fix: "optional: use a kernel built with CONFIG_DEBUG_INFO_BTF=y"}
	}
	return ok("/sys/kernel/btf/vmlinux present")
}

func (s *state) checkCgroup2(context.Context) Result {
	h := s.deps.host
	mnt, err := h.cgroup2()
	if err != nil {
		r := Result{Status: Fail, Detail: err.Error(),
			Fix: "mount the unified hierarchy (systemd.unified_cgroup_hierarchy=1 on the kernel command line, or `mount -t cgroup2 none /sys/fs/cgroup/unified` on hybrid hosts)"}
		if !s.ebpf() {
			r.Status = Warn
			r.Detail += " (--redirect=off identifies callers by IP and does not need it)"
		}
		return r
	}
	if !s.ebpf() {
		return ok("mounted at %s", mnt)
	}
	at := s.attachPath(mnt)
	id, err := h.cgroupID(at)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("mounted at %s, but the attach point %s: %v", mnt, at, err),
			Fix: "point --cgroup-path at an existing cgroup2 directory (or leave it empty for the cgroup2 root)"}
	}
	if rel, err := filepath.Rel(mnt, at); err != nil || strings.HasPrefix(rel, "..") {
		return Result{Status: Fail, Detail: fmt.Sprintf("attach point %s is outside the cgroup2 mount %s", at, mnt),
			Fix: "point --cgroup-path at a directory under " + mnt}
	}
	return ok("mounted at %s; attach point %s (cgroup id %d)", mnt, at, id)
}

// attachPath is the directory the daemon attaches to: --cgroup-path
// (relative to the cgroup2 mount unless absolute), else the mount itself.
func (s *state) attachPath(mnt string) string {
	if s.cfg.CgroupPath == "" {
		return mnt
	}
	if filepath.IsAbs(s.cfg.CgroupPath) {
		return filepath.Clean(s.cfg.CgroupPath)
	}
	return filepath.Join(mnt, s.cfg.CgroupPath)
}

// bpffsMounts returns the mount points of bpf filesystems in mountinfo.
func bpffsMounts(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, f := range fields {
			if f == "-" && i >= 4 && i+1 < len(fields) {
				if fields[i+1] == "bpf" {
					out = append(out, unescapeOctal(fields[4]))
				}
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// unescapeOctal undoes mountinfo's \040-style escapes.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

const bpffsRoot = "/sys/fs/bpf"

func (s *state) checkBPFFS(context.Context) Result {
	if !s.ebpf() {
		return skip("--redirect=off")
	}
	f, err := s.deps.host.mountinfo()
	if err != nil {
		return Result{Status: Warn, Detail: "read mountinfo: " + err.Error(), Fix: "run the doctor on the host, not in a container"}
	}
	mounts, err := bpffsMounts(f)
	f.Close()
	if err != nil {
		return Result{Status: Warn, Detail: err.Error(), Fix: "run the doctor on the host, not in a container"}
	}
	pin := filepath.Clean(s.cfg.BPFPinDir)
	best := ""
	for _, m := range mounts {
		if (pin == m || strings.HasPrefix(pin, strings.TrimSuffix(m, "/")+"/")) && len(m) > len(best) {
			best = m
		}
	}
	if best != "" {
		return ok("mounted at %s; pins go to %s", best, pin)
	}
	under := pin == bpffsRoot || strings.HasPrefix(pin, bpffsRoot+"/")
	if !under {
		return Result{Status: Fail, Detail: fmt.Sprintf("--bpf-pin-dir %s is not on a bpf filesystem", pin),
			Fix: fmt.Sprintf("mount one there (`mount -t bpf bpffs %s`) or use a pin dir under %s, which the daemon mounts itself", filepath.Dir(pin), bpffsRoot)}
	}
	s.mu.Lock()
	set, capErr := s.capEff, s.capErr
	s.mu.Unlock()
	if capErr == nil && !hasCap(set, capSysAdmin) {
		return Result{Status: Fail, Detail: "nothing mounted at " + bpffsRoot + ", and without CAP_SYS_ADMIN the daemon cannot mount it",
			Fix: "mount it at boot: add `bpffs /sys/fs/bpf bpf defaults,mode=700 0 0` to /etc/fstab and run `mount /sys/fs/bpf`"}
	}
	return Result{Status: Warn, Detail: "nothing mounted at " + bpffsRoot + " yet; a daemon run as root mounts it at start, the packaged unit (no CAP_SYS_ADMIN) cannot",
		Fix: "mount it at boot (systemd does unless masked; else `bpffs /sys/fs/bpf bpf defaults,mode=700 0 0` in /etc/fstab, then `mount /sys/fs/bpf`)"}
}

// readCaps reads the effective capability set for the checks that need it.
func (s *state) readCaps() {
	f, err := s.deps.host.procStatus()
	var set uint64
	if err == nil {
		set, err = parseCapEff(f)
		f.Close()
	}
	s.mu.Lock()
	s.capEff, s.capErr = set, err
	s.mu.Unlock()
}
