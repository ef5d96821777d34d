package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
)

func (s *state) checkRedirect(ctx context.Context) Result {
	if !s.ebpf() {
		return skip("--redirect=off: containers reach the proxy at --listen and are identified by IP")
	}
	st, err := s.deps.readStatus(s.cfg.BPFPinDir)
	attached, missing := 0, []string{}
	for _, l := range st.Links {
		if l.Attached {
			attached++
		} else {
			missing = append(missing, strings.TrimPrefix(l.Name, "link_"))
		}
	}
	const startFix = "start the daemon (systemctl start per-docker-roles) and read its log (journalctl -u per-docker-roles); if it runs, it uses another --bpf-pin-dir than the doctor was given"
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist) && attached == 0:
			return Result{Status: Warn, Detail: fmt.Sprintf("nothing pinned in %s: the redirect is not attached, metadata connections reach 169.254.169.254 untouched", s.cfg.BPFPinDir), Fix: startFix}
		case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
			return Result{Status: Warn, Detail: "cannot read the pins: " + err.Error(), Fix: "run the doctor as root to read the redirect's state"}
		case errors.Is(err, redirect.ErrUnsupported):
			return Result{Status: Fail, Detail: err.Error(), Fix: "run on Linux, or use --redirect=off"}
		}
		return Result{Status: Warn, Detail: fmt.Sprintf("%d of %d links attached; %v", attached, len(st.Links), err),
			Fix: "the pins are incomplete or from another version: restart the daemon (it adopts or recreates them), or `per-docker-roles bpf detach` and then start it"}
	}
	c := st.Counters
	lines := []string{}
	cg := "-"
	for _, l := range st.Links {
		if l.Attached {
			cg = fmt.Sprint(l.CgroupID)
			break
		}
	}
	lines = append(lines, fmt.Sprintf("%d of %d links attached in %s (cgroup id %s)", attached, len(st.Links), st.PinDir, cg))
	target := func(a netip.AddrPort) string {
		if !a.IsValid() {
			return "-"
		}
		return a.String()
	}
	state := "refusing (no target: fail closed)"
	if st.Configured() {
		state = "redirecting"
	}
	lines = append(lines, fmt.Sprintf("%s: host %s, containers %s, host6 %s, containers6 %s", state,
		target(st.HostTarget), target(st.NSTarget), target(st.HostTarget6), target(st.NSTarget6)))
	lines = append(lines, fmt.Sprintf("counters: redirected=%d exempt=%d refused=%d guard_refused=%d recorded=%d conflict=%d getpeername=%d; pending records %d",
		c.Redirected, c.Exempt, c.Refused, c.GuardRefused, c.Recorded, c.Conflict, c.Peername, st.PendingRecords))
	detail := strings.Join(lines, "\n")
	switch {
	case attached == 0:
		return Result{Status: Warn, Detail: detail + "\nno link attached: metadata connections reach 169.254.169.254 untouched", Fix: startFix}
	case len(missing) > 0:
		return Result{Status: Warn, Detail: detail + "\nnot attached: " + strings.Join(missing, ", "),
			Fix: "restart the daemon so it re-attaches every program (systemctl restart per-docker-roles)"}
	case !st.Configured():
		return Result{Status: Warn, Detail: detail + "\nthe daemon is not running: containers' metadata connections are refused until it starts", Fix: startFix}
	case st.HostTarget.IsValid() && int(st.HostTarget.Port()) != s.cfg.ProxyPort:
		return Result{Status: Warn, Detail: detail + fmt.Sprintf("\nthe redirect sends to port %d but --proxy-port is %d", st.HostTarget.Port(), s.cfg.ProxyPort),
			Fix: "run the doctor with the daemon's flags (the same PDR_* environment file)"}
	}
	if id, err := s.attachID(); err == nil && cg != fmt.Sprint(id) {
		return Result{Status: Warn, Detail: detail + fmt.Sprintf("\nattached at cgroup %s, but --cgroup-path resolves to cgroup %d", cg, id),
			Fix: "run the doctor with the daemon's flags, or restart the daemon to move the attachment"}
	}
	return ok("%s", detail)
}

// attachID is the cgroup id the daemon would attach to with cfg.
func (s *state) attachID() (uint64, error) {
	h := s.deps.host
	mnt, err := h.cgroup2()
	if err != nil {
		return 0, err
	}
	return h.cgroupID(s.attachPath(mnt))
}

// checkDaemon asks the running daemon's /readyz, which reflects its own
// index, redirect and upstream (the upstream guard keeps the doctor from
// asking the upstream itself while the daemon runs).
func (s *state) checkDaemon(ctx context.Context) Result {
	if s.cfg.AdminListen == "" {
		return skip("--admin-listen is empty")
	}
	host, port, err := net.SplitHostPort(s.cfg.AdminListen)
	if err != nil {
		return skip("--admin-listen %q is not host:port", s.cfg.AdminListen)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return skip("%v", err)
	}
	resp, err := s.deps.UpstreamClient.Do(req)
	if err != nil {
		return Result{Status: Warn, Detail: fmt.Sprintf("%v: the daemon is not running (or has another --admin-listen)", err),
			Fix: "systemctl start per-docker-roles; journalctl -u per-docker-roles says why it stopped"}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	text := strings.TrimSpace(string(body))
	if resp.StatusCode == http.StatusOK {
		return ok("GET %s: %s", url, text)
	}
	return Result{Status: Fail, Detail: fmt.Sprintf("GET %s: %d\n%s", url, resp.StatusCode, text),
		Fix: "the daemon runs but cannot serve: fix the component named above (\"upstream\": the helper; \"docker index\": dockerd; \"redirect\": the pins), see journalctl -u per-docker-roles"}
}
