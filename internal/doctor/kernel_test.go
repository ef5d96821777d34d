package doctor

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/per-docker-roles/per-docker-roles/internal/config"
)

func TestParseCapEff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in string
		want     uint64
		wantErr  bool
	}{
		{"root on 6.x", "Name:\tbash\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n", 0x1ffffffffff, false},
		{"the packaged unit's set", "CapEff:\t000000c000001000\n", 1<<39 | 1<<38 | 1<<12, false},
		{"unprivileged", "Uid:\t1000\nCapEff:\t0000000000000000\n", 0, false},
		{"no line", "Name:\tbash\nCapPrm:\t0000000000000000\n", 0, true},
		{"not hex", "CapEff:\tzz\n", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseCapEff(strings.NewReader(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseCapEff = %#x, %v; want %#x, err %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestCapVerdict(t *testing.T) {
	t.Parallel()
	const (
		k54  = 5<<16 | 4<<8
		k618 = 6<<16 | 18<<8
	)
	for _, tc := range []struct {
		name    string
		set     uint64
		kernel  uint32
		missing []string
	}{
		{"root", 0x1ffffffffff, k618, nil},
		{"CAP_BPF+CAP_NET_ADMIN (the unit)", 1<<capBPF | 1<<capNetAdmin, k618, nil},
		{"CAP_SYS_ADMIN alone", 1 << capSysAdmin, k618, nil},
		{"CAP_BPF without CAP_NET_ADMIN", 1<<capBPF | 1<<capPerfmon, k618, []string{"CAP_NET_ADMIN"}},
		{"CAP_NET_ADMIN without CAP_BPF", 1 << capNetAdmin, k618, []string{"CAP_BPF (or CAP_SYS_ADMIN)"}},
		{"nothing", 0, k618, []string{"CAP_BPF (or CAP_SYS_ADMIN)", "CAP_NET_ADMIN"}},
		{"CAP_BPF on a kernel without it", 1<<capBPF | 1<<capNetAdmin, k54, []string{"CAP_SYS_ADMIN (this kernel predates CAP_BPF)"}},
		{"CAP_BPF, kernel unknown", 1<<capBPF | 1<<capNetAdmin | 1<<capPerfmon, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			missing, _ := capVerdict(tc.set, tc.kernel)
			if !reflect.DeepEqual(missing, tc.missing) {
				t.Errorf("missing = %q, want %q", missing, tc.missing)
			}
		})
	}
}

func TestParseRelease(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want uint32
		err  bool
	}{
		{"6.18.44-fc-v1252", 6<<16 | 18<<8 | 44, false},
		{"5.10.0-28-amd64", 5<<16 | 10<<8, false},
		{"5.14", 5<<16 | 14<<8, false},
		{"4.19.300", 4<<16 | 19<<8 | 255, false},
		{"6.1.0+", 6<<16 | 1<<8, false},
		{"linux", 0, true},
		{"6", 0, true},
	} {
		got, err := parseRelease(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseRelease(%q) = %#x, %v; want %#x, err %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestBPFFSMounts(t *testing.T) {
	t.Parallel()
	info := `22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
46 23 0:40 / /sys/fs/bpf rw,relatime - bpf bpffs rw,mode=700
47 23 0:41 / /run/my\040bpf rw shared:3 - bpf none rw
36 35 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
`
	got, err := bpffsMounts(strings.NewReader(info))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/sys/fs/bpf", "/run/my bpf"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("bpffsMounts = %q, want %q", got, want)
	}
}

func TestHelperName(t *testing.T) {
	t.Parallel()
	for f, want := range map[asm.BuiltinFunc]string{
		asm.FnGetNetnsCookie:     "get_netns_cookie",
		asm.FnSockOpsCbFlagsSet:  "sock_ops_cb_flags_set",
		asm.FnGetCurrentCgroupId: "get_current_cgroup_id",
	} {
		if got := helperName(f); got != want {
			t.Errorf("helperName(%v) = %q, want %q", f, got, want)
		}
	}
}

// TestKernelChecks drives the kernel-side checks with fake probes: each
// case changes one answer and expects one verdict.
func TestKernelChecks(t *testing.T) {
	t.Parallel()
	notSupported := fmt.Errorf("probe: %w", ebpf.ErrNotSupported)
	for _, tc := range []struct {
		name   string
		cfg    func(*config.Config)
		change func(*hostProbes)
		check  string
		want   Status
		detail string
	}{
		{"good kernel", nil, nil, "kernel", OK, "6.18.44"},
		{"old kernel", nil, func(h *hostProbes) { h.uname = unameOf("5.10.0-28-amd64") }, "kernel", Fail, "needs Linux 5.14"},
		{"old kernel is fine without the redirect", redirectOff, func(h *hostProbes) { h.uname = unameOf("4.19.0") }, "kernel", OK, "needs no kernel features"},
		{"no netns cookie", nil, func(h *hostProbes) { h.netnsCookie = func() error { return syscall.ENOPROTOOPT } }, "kernel", Fail, "SO_NETNS_COOKIE"},
		{"all program types", nil, nil, "bpf programs", OK, "getpeername6"},
		{"no getpeername hook", nil, func(h *hostProbes) {
			h.attachType = func(_ ebpf.ProgramType, a ebpf.AttachType) error {
				if a == ebpf.AttachCgroupInet4GetPeername {
					return notSupported
				}
				return nil
			}
		}, "bpf programs", Fail, "lacks eBPF program or attach types: getpeername4"},
		{"no sock_ops", nil, func(h *hostProbes) {
			h.programType = func(p ebpf.ProgramType) error {
				if p == ebpf.SockOps {
					return notSupported
				}
				return nil
			}
		}, "bpf programs", Fail, "sock_ops"},
		{"probes denied", nil, func(h *hostProbes) { h.programType = func(ebpf.ProgramType) error { return syscall.EPERM } }, "bpf programs", Warn, "without privileges"},
		{"programs skipped without the redirect", redirectOff, nil, "bpf programs", Skip, "--redirect=off"},
		{"no netns cookie helper", nil, func(h *hostProbes) {
			h.helper = func(_ ebpf.ProgramType, f asm.BuiltinFunc) error {
				if f == asm.FnGetNetnsCookie {
					return notSupported
				}
				return nil
			}
		}, "bpf helpers", Fail, "get_netns_cookie@sock_addr"},
		{"no lru map", nil, func(h *hostProbes) {
			h.mapType = func(m ebpf.MapType) error {
				if m == ebpf.LRUHash {
					return notSupported
				}
				return nil
			}
		}, "bpf helpers", Fail, "lruhash map"},
		{"odd probe error", nil, func(h *hostProbes) { h.mapType = func(ebpf.MapType) error { return errors.New("weird") } }, "bpf helpers", Warn, "weird"},
		{"no btf", nil, func(h *hostProbes) { h.btf = func() error { return syscall.ENOENT } }, "btf", Warn, "not needed"},
		{"no cgroup2", nil, func(h *hostProbes) {
			h.cgroup2 = func() (string, error) { return "", errors.New("no cgroup2 filesystem mounted") }
		}, "cgroup2", Fail, "no cgroup2"},
		{"no cgroup2 without the redirect", redirectOff, func(h *hostProbes) { h.cgroup2 = func() (string, error) { return "", errors.New("none") } }, "cgroup2", Warn, "does not need it"},
		{"attach point missing", func(c *config.Config) { c.CgroupPath = "/sys/fs/cgroup/nope" }, func(h *hostProbes) {
			h.cgroupID = func(d string) (uint64, error) {
				if d == "/sys/fs/cgroup/nope" {
					return 0, syscall.ENOENT
				}
				return 1, nil
			}
		}, "cgroup2", Fail, "attach point /sys/fs/cgroup/nope"},
		{"attach point relative", func(c *config.Config) { c.CgroupPath = "docker" }, nil, "cgroup2", OK, "attach point /sys/fs/cgroup/docker"},
		{"bpffs mounted", nil, nil, "bpffs", OK, "mounted at /sys/fs/bpf"},
		{"bpffs missing, root mounts it", nil, func(h *hostProbes) { h.mountinfo = mountinfoOf("") }, "bpffs", Warn, "run as root mounts it"},
		{"bpffs missing, cannot mount", nil, func(h *hostProbes) {
			h.mountinfo = mountinfoOf("")
			h.procStatus = statusOf(1<<capBPF | 1<<capNetAdmin | 1<<capPerfmon)
		}, "bpffs", Fail, "without CAP_SYS_ADMIN"},
		{"pin dir off bpffs", func(c *config.Config) { c.BPFPinDir = "/var/lib/pdr" }, nil, "bpffs", Fail, "not on a bpf filesystem"},
		{"caps ok", nil, nil, "capabilities", OK, "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN"},
		{"caps of the packaged unit", nil, func(h *hostProbes) { h.procStatus = statusOf(1<<capBPF | 1<<capNetAdmin) }, "capabilities", OK, "CAP_BPF, CAP_NET_ADMIN"},
		{"caps missing", nil, func(h *hostProbes) { h.procStatus = statusOf(1 << capNetAdmin) }, "capabilities", Fail, "missing CAP_BPF"},
		{"caps on an old kernel", nil, func(h *hostProbes) {
			h.uname = unameOf("5.4.0")
			h.procStatus = statusOf(1<<capBPF | 1<<capNetAdmin)
		}, "capabilities", Fail, "predates CAP_BPF"},
		{"caps not needed without the redirect", redirectOff, func(h *hostProbes) { h.procStatus = statusOf(0) }, "capabilities", OK, "needs none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := config.Default()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			h := goodHost()
			if tc.change != nil {
				tc.change(h)
			}
			rep := runOffline(t, cfg, h)
			e, ok := rep.Get(tc.check)
			if !ok {
				t.Fatalf("no %q entry", tc.check)
			}
			if e.Status != tc.want || !strings.Contains(e.Detail, tc.detail) {
				t.Errorf("%s: got %v %q, want %v containing %q", tc.check, e.Status, e.Detail, tc.want, tc.detail)
			}
			if (e.Status == Fail || e.Status == Warn) && e.Fix == "" {
				t.Errorf("%s: %v without a fix", tc.check, e.Status)
			}
		})
	}
}

func redirectOff(c *config.Config) { c.Redirect = "off" }

// runOffline runs every check with fake probes, an unreachable Docker and
// an unreachable upstream, and returns the report.
func runOffline(t *testing.T, cfg config.Config, h *hostProbes) Report {
	t.Helper()
	cfg.Upstream = "http://127.0.0.1:1"
	cfg.AdminListen = "127.0.0.1:1"
	return Run(context.Background(), cfg, Deps{
		Docker:     &fakeDocker{pingErr: errors.New("fake: no engine")},
		Timeout:    2 * time.Second,
		host:       h,
		readStatus: noPins,
	})
}
