package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Capability numbers from linux/capability.h.
const (
	capNetAdmin = 12
	capSysAdmin = 21
	capPerfmon  = 38 // Linux 5.8+
	capBPF      = 39 // Linux 5.8+; before that BPF needs CAP_SYS_ADMIN
)

// kernel58 is KERNEL_VERSION(5, 8, 0), the first kernel with CAP_BPF.
const kernel58 = 5<<16 | 8<<8

var capNames = map[int]string{capNetAdmin: "CAP_NET_ADMIN", capSysAdmin: "CAP_SYS_ADMIN", capPerfmon: "CAP_PERFMON", capBPF: "CAP_BPF"}

// ErrNoCapEff means /proc/<pid>/status has no CapEff line.
var ErrNoCapEff = errors.New("no CapEff line")

// parseCapEff returns the effective capability set from the text of
// /proc/<pid>/status ("CapEff:\t000001ffffffffff").
func parseCapEff(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		c, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("parse CapEff %q: %w", v, err)
		}
		return c, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read process status: %w", err)
	}
	return 0, ErrNoCapEff
}

func hasCap(set uint64, c int) bool { return set&(1<<uint(c)) != 0 }

// capVerdict decides whether the effective set can load and attach the
// redirect. kernelCode is LINUX_VERSION_CODE (0 when unknown); before 5.8
// CAP_BPF does not exist and CAP_SYS_ADMIN stands in for it. It returns the
// missing capabilities (nil when enough) and a description of what is held.
func capVerdict(set uint64, kernelCode uint32) (missing []string, held string) {
	var have []string
	for _, c := range []int{capBPF, capNetAdmin, capPerfmon, capSysAdmin} {
		if hasCap(set, c) {
			have = append(have, capNames[c])
		}
	}
	held = strings.Join(have, ", ")
	if held == "" {
		held = "none of CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN"
	}
	bpfOK := hasCap(set, capSysAdmin) || (hasCap(set, capBPF) && (kernelCode == 0 || kernelCode >= kernel58))
	if !bpfOK {
		if kernelCode != 0 && kernelCode < kernel58 {
			missing = append(missing, "CAP_SYS_ADMIN (this kernel predates CAP_BPF)")
		} else {
			missing = append(missing, "CAP_BPF (or CAP_SYS_ADMIN)")
		}
	}
	if !hasCap(set, capNetAdmin) && !hasCap(set, capSysAdmin) {
		// Attaching cgroup sock_addr/sock_ops programs needs CAP_NET_ADMIN;
		// CAP_SYS_ADMIN implies it for these checks.
		missing = append(missing, "CAP_NET_ADMIN")
	}
	return missing, held
}

func (s *state) checkCaps(context.Context) Result {
	s.mu.Lock()
	set, err, code := s.capEff, s.capErr, s.kernelCode
	s.mu.Unlock()
	if err != nil {
		return Result{Status: Warn, Detail: "cannot read the effective capabilities: " + err.Error(),
			Fix: "run the doctor as the daemon runs (root, or the unit's AmbientCapabilities)"}
	}
	missing, held := capVerdict(set, code)
	detail := fmt.Sprintf("CapEff %016x: %s", set, held)
	if !s.ebpf() {
		return ok("%s (--redirect=off needs none)", detail)
	}
	if len(missing) > 0 {
		return Result{Status: Fail, Detail: detail + "; missing " + strings.Join(missing, ", "),
			Fix: "run as root, or give the process CAP_BPF and CAP_NET_ADMIN (the packaged unit sets AmbientCapabilities=CAP_BPF CAP_NET_ADMIN); or run with --redirect=off"}
	}
	return ok("%s", detail)
}
