// Package doctor checks whether this host can run per-docker-roles and
// prints a checklist with a fix for each problem: kernel and eBPF support,
// cgroup2 and bpffs, the process's capabilities, the Docker engine, the
// upstream credential source, STS, the pinned redirect, the daemon's
// readiness and the containers whose role label the policy refuses.
//
// Every check is bounded by a timeout, so the doctor answers even when a
// dependency hangs. Checks run in order because later ones use what earlier
// ones found (STS needs the upstream credentials, the label check needs
// the base account from STS).
package doctor

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/system"

	"github.com/per-docker-roles/per-docker-roles/internal/config"
	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
)

// Status is the outcome of one check.
type Status int

// Outcomes, from good to bad; Skip means the check could not run because
// an earlier one failed or it does not apply to this configuration.
const (
	OK Status = iota
	Warn
	Fail
	Skip
)

// String returns the four-letter tag shown in the checklist.
func (s Status) String() string {
	switch s {
	case OK:
		return " OK "
	case Warn:
		return "WARN"
	case Fail:
		return "FAIL"
	case Skip:
		return "SKIP"
	}
	return fmt.Sprintf("?%d?", int(s))
}

// Result is what one check found. Fix says what to do about a WARN or
// FAIL; it is empty for OK and SKIP.
type Result struct {
	Status Status
	Detail string
	Fix    string
}

// Check is one item of the checklist. Run must honour ctx.
type Check struct {
	Name string
	Run  func(ctx context.Context) Result
}

// Entry is a check's name with its result.
type Entry struct {
	Name string
	Result
}

// Report is the checklist in the order the checks ran.
type Report struct {
	Entries []Entry
}

// Failed reports whether any check failed: something blocks operation.
func (r Report) Failed() bool {
	for _, e := range r.Entries {
		if e.Status == Fail {
			return true
		}
	}
	return false
}

// ExitCode is 1 when a check failed, else 0 (warnings do not block).
func (r Report) ExitCode() int {
	if r.Failed() {
		return 1
	}
	return 0
}

// Get returns the entry named name.
func (r Report) Get(name string) (Entry, bool) {
	for _, e := range r.Entries {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

const (
	indent    = "       "
	fixPrefix = "      fix: "
)

// Print renders the checklist:
//
//	[ OK ] kernel           6.18.44 (x86_64)
//	[FAIL] upstream         GET http://127.0.0.1:9911/...: connection refused
//	      fix: is aws-signing-helper.service running? ...
//
// followed by a one-line summary.
func (r Report) Print(w io.Writer) error {
	width := 0
	for _, e := range r.Entries {
		width = max(width, len(e.Name))
	}
	var b strings.Builder
	counts := map[Status]int{}
	for _, e := range r.Entries {
		counts[e.Status]++
		lines := strings.Split(strings.TrimRight(e.Detail, "\n"), "\n")
		fmt.Fprintf(&b, "[%s] %-*s %s\n", e.Status, width, e.Name, lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(&b, "%s%-*s %s\n", indent, width, "", l)
		}
		if e.Fix != "" && (e.Status == Warn || e.Status == Fail) {
			fixLines := strings.Split(strings.TrimRight(e.Fix, "\n"), "\n")
			fmt.Fprintf(&b, "%s%s\n", fixPrefix, fixLines[0])
			for _, l := range fixLines[1:] {
				fmt.Fprintf(&b, "%s%s\n", strings.Repeat(" ", len(fixPrefix)), l)
			}
		}
	}
	fmt.Fprintf(&b, "\n%d ok, %d warning(s), %d failed, %d skipped", counts[OK], counts[Warn], counts[Fail], counts[Skip])
	if r.Failed() {
		b.WriteString(": something blocks operation\n")
	} else {
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Docker is the part of the Docker Engine API client the doctor uses;
// *client.Client satisfies it.
type Docker interface {
	Ping(ctx context.Context) (types.Ping, error)
	ServerVersion(ctx context.Context) (types.Version, error)
	Info(ctx context.Context) (system.Info, error)
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	DaemonHost() string
}

// Deps are the doctor's connections to the world. Zero values take the
// real thing built from the configuration.
type Deps struct {
	// Docker is the engine client (default: one for cfg.DockerHost with
	// API version negotiation; closed by Run).
	Docker Docker
	// UpstreamClient talks to the upstream and the daemon's admin address
	// (default: no proxy, no redirects).
	UpstreamClient *http.Client
	// STSClient talks to STS (default: the standard transport, which
	// honours HTTPS_PROXY like the daemon does).
	STSClient *http.Client
	// Timeout bounds each check (default 5s).
	Timeout time.Duration
	// Now is the clock for credential expiry (default time.Now).
	Now func() time.Time

	// host replaces the kernel probes in tests.
	host *hostProbes
	// readStatus replaces redirect.ReadStatus in tests.
	readStatus func(pinDir string) (redirect.Status, error)
}

// DefaultTimeout bounds one check.
const DefaultTimeout = 5 * time.Second

// answerGrace is how long a timed-out check may still answer for itself.
const answerGrace = 250 * time.Millisecond

// Run checks this host against cfg and returns the checklist.
func Run(ctx context.Context, cfg config.Config, deps Deps) Report {
	s := newState(cfg, deps)
	defer s.close()
	var rep Report
	for _, c := range s.checks() {
		rep.Entries = append(rep.Entries, Entry{Name: c.Name, Result: runOne(ctx, c, s.deps.Timeout)})
	}
	return rep
}

// runOne runs c under a timeout, in its own goroutine so that a check
// stuck in a call that ignores ctx cannot hang the doctor.
func runOne(ctx context.Context, c Check, timeout time.Duration) Result {
	if err := ctx.Err(); err != nil {
		return Result{Status: Skip, Detail: "not run: " + err.Error()}
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ch := make(chan Result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				ch <- Result{Status: Fail, Detail: fmt.Sprintf("check crashed: %v", p),
					Fix: "this is a bug in per-docker-roles doctor: please report it with this output"}
			}
		}()
		ch <- c.Run(cctx)
	}()
	select {
	case r := <-ch:
		return r
	case <-cctx.Done():
		// A check that honours ctx answers right after the deadline with
		// a better account of what hung than ours.
		grace := time.NewTimer(answerGrace)
		defer grace.Stop()
		select {
		case r := <-ch:
			return r
		case <-grace.C:
		}
		return Result{Status: Fail, Detail: fmt.Sprintf("no answer within %v", timeout),
			Fix: "the component this check talks to hangs; see the detail of the checks below and the daemon's log"}
	}
}

// state is what the checks learn and share. Checks run one at a time,
// but a check abandoned on timeout may still write, so fields are
// guarded.
type state struct {
	cfg    config.Config
	deps   Deps
	cfgErr error

	mu         sync.Mutex
	capEff     uint64
	capErr     error
	kernelCode uint32 // LINUX_VERSION_CODE of the running kernel, 0 unknown
	base       *baseCreds
	guarded    bool   // the redirect's guard refused our upstream connect
	baseARN    string // from GetCallerIdentity
	dockerOK   bool

	ownDocker io.Closer
}

func newState(cfg config.Config, deps Deps) *state {
	if deps.Timeout <= 0 {
		deps.Timeout = DefaultTimeout
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.UpstreamClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil // the upstream is local or link-local: never proxy it
		deps.UpstreamClient = &http.Client{
			Transport:     t,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if deps.STSClient == nil {
		deps.STSClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if deps.host == nil {
		deps.host = realHost()
	}
	if deps.readStatus == nil {
		deps.readStatus = redirect.ReadStatus
	}
	s := &state{cfg: cfg, deps: deps, cfgErr: cfg.Validate()}
	s.readCaps()
	return s
}

func (s *state) close() {
	if s.ownDocker != nil {
		s.ownDocker.Close()
	}
}

func (s *state) ebpf() bool { return s.cfg.Redirect == "ebpf" }

// checks lists the checklist in order.
func (s *state) checks() []Check {
	return []Check{
		{"configuration", s.checkConfig},
		{"kernel", s.checkKernel},
		{"capabilities", s.checkCaps},
		{"bpf programs", s.checkPrograms},
		{"bpf helpers", s.checkHelpers},
		{"btf", s.checkBTF},
		{"cgroup2", s.checkCgroup2},
		{"bpffs", s.checkBPFFS},
		{"docker", s.checkDocker},
		{"cgroup driver", s.checkCgroupDriver},
		{"upstream", s.checkUpstream},
		{"sts", s.checkSTS},
		{"redirect", s.checkRedirect},
		{"daemon", s.checkDaemon},
		{"role labels", s.checkLabels},
	}
}

func (s *state) checkConfig(context.Context) Result {
	if s.cfgErr != nil {
		return Result{Status: Fail, Detail: s.cfgErr.Error(),
			Fix: "correct the flag or PDR_* variable named above (the daemon refuses to start with it); see docs/configuration.md"}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("redirect=%s identity=%s upstream=%s region=%s", s.cfg.Redirect, s.cfg.IdentityMode(), s.cfg.Upstream, s.cfg.Region)}
}

func ok(format string, args ...any) Result {
	return Result{Status: OK, Detail: fmt.Sprintf(format, args...)}
}

func skip(format string, args ...any) Result {
	return Result{Status: Skip, Detail: fmt.Sprintf(format, args...)}
}
