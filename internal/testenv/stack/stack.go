// Package stack runs the whole product on one machine, for the end-to-end
// tests and the demo: the real aws_signing_helper against the Roles
// Anywhere fake, the STS fake, the per-docker-roles daemon as a child
// process with the eBPF redirect attached to dockerd's cgroup subtree, and
// SDK client containers. Everything listens on loopback, except the STS
// fake's second listener on the gateway of a Docker network the stack
// creates itself, so client containers can call GetCallerIdentity.
package stack

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"go.uber.org/zap"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

// Config describes one stack. Zero fields take the defaults noted.
type Config struct {
	Daemon string // per-docker-roles binary (required)
	Docker *client.Client
	// DockerHost is the daemon's --docker-host: the engine Docker talks
	// to ("" = the system dockerd).
	DockerHost string
	// WorkDir holds PKI, logs and the helper's HOME (required).
	WorkDir string
	// HelperPath is aws_signing_helper; empty builds it (cached).
	HelperPath string
	// BaseSession is the helper's --session-duration (default 1h).
	BaseSession time.Duration
	// DaemonArgs are appended to the daemon's command line.
	DaemonArgs []string
	// IPMode runs the daemon with --redirect=off --identity=ip, listening
	// on the stack network's gateway; clients then reach it through
	// AWS_EC2_METADATA_SERVICE_ENDPOINT, which Run sets.
	IPMode bool
	// Roles are extra STS role policies (fakeaws) keyed by role ARN.
	Upstream testenv.UpstreamConfig
	Log      *zap.Logger
}

// Stack is a running product.
type Stack struct {
	cfg Config
	log *zap.Logger
	cli *client.Client

	Up *testenv.Upstream

	Network  string     // the stack's own Docker network
	Gateway  netip.Addr // its gateway (host side)
	STSForCt string     // STS endpoint reachable from containers
	stsSrv   *http.Server

	CgroupPath string // eBPF attach point: dockerd's cgroup subtree
	PinDir     string
	ProxyPort  int
	AdminURL   string
	LogPath    string // daemon log (JSON lines)

	mu     sync.Mutex
	daemon *exec.Cmd
	exited chan struct{}
	logf   *os.File
}

// Start brings the stack up; Close takes it down, also after a failure.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if cfg.Daemon == "" || cfg.WorkDir == "" || cfg.Docker == nil {
		return nil, errors.New("stack: Daemon, WorkDir and Docker are required")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	s := &Stack{cfg: cfg, log: cfg.Log, cli: cfg.Docker}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	up := cfg.Upstream
	up.PKIDir = filepath.Join(cfg.WorkDir, "pki")
	up.StartHelper = true
	up.HelperPath = cfg.HelperPath
	if cfg.BaseSession != 0 {
		up.SessionDuration = cfg.BaseSession
	}
	if s.Up, err = testenv.NewUpstream(ctx, up, cfg.Log.Named("upstream")); err != nil {
		return nil, err
	}

	if err := s.createNetwork(ctx); err != nil {
		return nil, err
	}
	if s.CgroupPath, err = dockerCgroup(ctx, s.cli); err != nil {
		return nil, err
	}
	s.PinDir = "/sys/fs/bpf/pdr-stack-" + randHex(4)
	if s.ProxyPort, err = freePort(); err != nil {
		return nil, err
	}
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	s.AdminURL = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	s.LogPath = filepath.Join(cfg.WorkDir, "per-docker-roles.log")
	if err := s.StartDaemon(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// createNetwork makes the stack's Docker network and serves STS on its
// gateway: an address of a network this stack created, never beyond it.
func (s *Stack) createNetwork(ctx context.Context) error {
	s.Network = "pdr-stack-" + randHex(4)
	if _, err := s.cli.NetworkCreate(ctx, s.Network, network.CreateOptions{Driver: "bridge",
		Labels: map[string]string{"pdr.stack": "1"}}); err != nil {
		return fmt.Errorf("create network %s: %w", s.Network, err)
	}
	nw, err := s.cli.NetworkInspect(ctx, s.Network, network.InspectOptions{})
	if err != nil {
		return fmt.Errorf("inspect network %s: %w", s.Network, err)
	}
	for _, c := range nw.IPAM.Config {
		if a, err := netip.ParseAddr(c.Gateway); err == nil && a.Is4() {
			s.Gateway = a
		}
	}
	if !s.Gateway.IsValid() {
		return fmt.Errorf("network %s has no IPv4 gateway", s.Network)
	}
	// The bridge gets its address once the network exists; listen on it.
	var ln net.Listener
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", netip.AddrPortFrom(s.Gateway, 0).String()); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("listen on gateway %s: %w", s.Gateway, err)
	}
	s.STSForCt = "http://" + ln.Addr().String()
	s.stsSrv = &http.Server{Handler: s.Up.STS, ReadHeaderTimeout: 5 * time.Second}
	go s.stsSrv.Serve(ln) //nolint:errcheck // ends with Close
	return nil
}

// dockerCgroup returns dockerd's cgroup2 subtree (created if absent, so
// the programs can attach before the first container starts). Attaching
// there, not at the root, keeps the machine's other traffic untouched.
func dockerCgroup(ctx context.Context, cli *client.Client) (string, error) {
	info, err := cli.Info(ctx)
	if err != nil {
		return "", fmt.Errorf("docker info: %w", err)
	}
	mnt, err := cgroup.Mount()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(mnt, "docker")
	if info.CgroupDriver == "systemd" {
		dir = filepath.Join(mnt, "system.slice")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("docker cgroup %s: %w", dir, err)
	}
	return dir, nil
}

// DaemonArgs is the daemon's command line.
func (s *Stack) DaemonArgs() []string {
	args := []string{
		"--proxy-port", strconv.Itoa(s.ProxyPort),
		"--admin-listen", strings.TrimPrefix(s.AdminURL, "http://"),
		"--upstream", s.Up.HelperURL,
		"--sts-endpoint", s.Up.STSURL,
		"--region", s.Up.Region,
		"--cgroup-path", s.CgroupPath,
		"--bpf-pin-dir", s.PinDir,
		"--log-format", "json",
		"--log-level", "debug",
	}
	if s.cfg.DockerHost != "" {
		args = append(args, "--docker-host", s.cfg.DockerHost)
	}
	if s.cfg.IPMode {
		args = append(args, "--redirect=off", "--identity=ip", "--listen", s.ProxyURL()[len("http://"):])
	}
	return append(args, s.cfg.DaemonArgs...)
}

// ProxyURL is where containers reach the proxy in IPMode.
func (s *Stack) ProxyURL() string {
	return "http://" + netip.AddrPortFrom(s.Gateway, uint16(s.ProxyPort)).String()
}

// StartDaemon starts per-docker-roles and waits until /readyz answers 200.
func (s *Stack) StartDaemon(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.daemon != nil {
		return nil
	}
	f, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.cfg.Daemon, s.DaemonArgs()...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + s.cfg.WorkDir}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start daemon: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.daemon, s.exited, s.logf = cmd, exited, f
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			s.daemon = nil
			f.Close()
			return fmt.Errorf("daemon exited during start-up; log tail:\n%s", s.LogTail(20))
		default:
		}
		if err := s.probe(ctx, "/readyz"); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon not ready after 60s; log tail:\n%s", s.LogTail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// StopDaemon sends SIGTERM (kill=false) or SIGKILL and waits for the exit.
func (s *Stack) StopDaemon(kill bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.daemon == nil {
		return
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = s.daemon.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		_ = s.daemon.Process.Kill()
		<-s.exited
	}
	s.logf.Close()
	s.daemon = nil
}

func (s *Stack) probe(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.AdminURL+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %d %s", path, resp.StatusCode, b)
	}
	return nil
}

// Metrics returns the daemon's /metrics text.
func (s *Stack) Metrics(ctx context.Context) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.AdminURL+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Client describes one client container run.
type Client struct {
	Image   string
	Name    string // default: random
	Role    string // value of per-docker-roles.role; "" = no label
	Labels  map[string]string
	Network string // default: the stack's network
	Cmd     []string
	Env     []string
	CapAdd  []string
	// CgroupnsPrivate gives the container its own cgroup namespace (the
	// default on cgroup v1 hosts is the host's), so a cgroup2 mount inside
	// it shows only the container's own subtree.
	CgroupnsPrivate bool
	Timeout         time.Duration // default 60s
	// Started, if set, receives the container id once it runs.
	Started func(id string)
}

// Result is what a client container printed and how it exited.
type Result struct {
	ID, Name string
	Stdout   string
	Stderr   string
	Exit     int
	Lines    []map[string]any // stdout lines that are JSON objects
}

// Run runs a client container to completion and removes it.
func (s *Stack) Run(ctx context.Context, c Client) (Result, error) {
	if c.Name == "" {
		c.Name = "pdr-stack-client-" + randHex(4)
	}
	if c.Network == "" {
		c.Network = s.Network
	}
	if c.Timeout == 0 {
		c.Timeout = 60 * time.Second
	}
	labels := map[string]string{}
	for k, v := range c.Labels {
		labels[k] = v
	}
	if c.Role != "" {
		labels["per-docker-roles.role"] = c.Role
	}
	env := append([]string{
		"STS_ENDPOINT=" + s.STSForCt,
		"AWS_REGION=" + s.Up.Region,
		"AWS_DEFAULT_REGION=" + s.Up.Region,
	}, c.Env...)
	if s.cfg.IPMode {
		env = append(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT="+s.ProxyURL()+"/")
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(c.Network), CapAdd: c.CapAdd}
	if c.CgroupnsPrivate {
		hc.CgroupnsMode = container.CgroupnsModePrivate
	}
	created, err := s.cli.ContainerCreate(ctx,
		&container.Config{Image: c.Image, Cmd: c.Cmd, Env: env, Labels: labels}, hc, nil, nil, c.Name)
	if err != nil {
		return Result{}, fmt.Errorf("create %s: %w", c.Name, err)
	}
	res := Result{ID: created.ID, Name: c.Name}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = s.cli.ContainerRemove(rctx, created.ID, container.RemoveOptions{Force: true})
	}()
	waitC, errC := s.cli.ContainerWait(ctx, created.ID, container.WaitConditionNextExit)
	if err := s.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return res, fmt.Errorf("start %s: %w", c.Name, err)
	}
	if c.Started != nil {
		c.Started(created.ID)
	}
	select {
	case w := <-waitC:
		res.Exit = int(w.StatusCode)
	case err := <-errC:
		return res, fmt.Errorf("wait %s: %w", c.Name, err)
	}
	logs, err := s.cli.ContainerLogs(ctx, created.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return res, fmt.Errorf("logs %s: %w", c.Name, err)
	}
	defer logs.Close()
	var out, errb bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &errb, logs); err != nil {
		return res, fmt.Errorf("read logs %s: %w", c.Name, err)
	}
	res.Stdout, res.Stderr = out.String(), errb.String()
	sc := bufio.NewScanner(strings.NewReader(res.Stdout))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			res.Lines = append(res.Lines, m)
		}
	}
	return res, nil
}

// DaemonLog returns the daemon's log lines decoded as JSON objects.
func (s *Stack) DaemonLog() []map[string]any {
	b, _ := os.ReadFile(s.LogPath)
	var out []map[string]any
	for _, line := range bytes.Split(b, []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// Close stops everything and removes what the stack created: the daemon,
// its pinned programs, the network, the helper and the fakes.
func (s *Stack) Close() {
	s.StopDaemon(false)
	if s.PinDir != "" && s.cfg.Daemon != "" {
		out, err := exec.Command(s.cfg.Daemon, "bpf", "detach", "--bpf-pin-dir", s.PinDir).CombinedOutput()
		if err != nil {
			s.log.Warn("bpf detach", zap.Error(err), zap.ByteString("output", out))
		}
	}
	if s.stsSrv != nil {
		_ = s.stsSrv.Close()
	}
	if s.Network != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = s.cli.NetworkRemove(ctx, s.Network)
	}
	if s.Up != nil {
		_ = s.Up.Close()
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// LogTail returns the last n lines of the daemon's log.
func (s *Stack) LogTail(n int) string {
	b, _ := os.ReadFile(s.LogPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
