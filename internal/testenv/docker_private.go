package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
)

// Dockerd is a private Docker engine for tests that must restart dockerd:
// the system engine is shared and must never be restarted. It has its own
// socket, data root, exec root (and so its own supervised containerd),
// pidfile, containerd namespaces and default bridge, and adds no iptables
// rules, so it touches nothing of the system engine's.
//
// Its default bridge is an interface of its own (pdrdb-<hex>, created here,
// deleted in cleanup; dockerd gives it a free subnet from its pools), NOT
// --bridge=none: dockerd 20.10 started with --bridge=none deletes the
// interface named docker0, which is the system engine's bridge, and every
// container on the default bridge of the system engine then fails to
// start. Containers here may use --network none, the default bridge, or
// networks the test creates in this engine.
type Dockerd struct {
	Host string // "unix:///tmp/pdrd-.../d.sock"

	t      testing.TB
	dir    string
	bridge string
	args   []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	logf *os.File
}

// PrivateDockerd starts a private dockerd and returns its host, a restart
// function (kill -9, then start again on the same socket and data) and a
// stop function (graceful). Cleanup stops it and removes its directories.
func PrivateDockerd(t testing.TB) (host string, restart func(), stop func()) {
	t.Helper()
	d := StartPrivateDockerd(t)
	return d.Host, d.Restart, d.Stop
}

// StartPrivateDockerd starts a private dockerd and waits until it answers.
func StartPrivateDockerd(t testing.TB) *Dockerd {
	t.Helper()
	RequirePrivileged(t)
	if _, err := exec.LookPath("dockerd"); err != nil {
		Unsupported(t, "dockerd binary", err)
	}
	// Short path: unix socket paths (ours and containerd's) are limited
	// to about 108 bytes.
	dir, err := os.MkdirTemp("/tmp", "pdrd-")
	if err != nil {
		t.Fatal(err)
	}
	ns := filepath.Base(dir)
	br := "pdrdb-" + strings.TrimPrefix(ns, "pdrd-")
	if len(br) > 15 { // IFNAMSIZ-1
		br = br[:15]
	}
	if out, err := exec.Command("ip", "link", "add", br, "type", "bridge").CombinedOutput(); err != nil {
		t.Fatalf("create bridge %s for private dockerd: %v: %s", br, err, out)
	}
	cfg := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(cfg, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &Dockerd{
		Host:   "unix://" + filepath.Join(dir, "d.sock"),
		t:      t,
		dir:    dir,
		bridge: br,
		args: []string{
			"--host", "unix://" + filepath.Join(dir, "d.sock"),
			"--config-file", cfg, // never the host's /etc/docker/daemon.json
			"--data-root", filepath.Join(dir, "data"),
			"--exec-root", filepath.Join(dir, "exec"),
			"--pidfile", filepath.Join(dir, "dockerd.pid"),
			"--containerd-namespace", ns,
			"--containerd-plugins-namespace", ns + "-plugins",
			"--storage-driver", "vfs", // scratch images are tiny; no overlay mounts to leak
			"--bridge", br, // never "none": see Dockerd
			"--iptables=false",
			"--ip6tables=false",
			"--ip-masq=false",
			"--userland-proxy=false",
			"--log-level", "info",
		},
	}
	t.Cleanup(d.cleanup)
	d.start()
	return d
}

// Client returns a client for this engine, closed in t.Cleanup.
func (d *Dockerd) Client(t testing.TB) *client.Client {
	t.Helper()
	return dockerClient(t, d.Host)
}

func (d *Dockerd) start() {
	d.t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	logf, err := os.OpenFile(filepath.Join(d.dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	hadDocker0 := hasLink("docker0")
	cmd := exec.Command("dockerd", d.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a signal to the test binary's group must not
	// reach it, and we signal it alone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		d.t.Fatalf("start private dockerd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	d.cmd, d.done, d.logf = cmd, done, logf

	deadline := time.Now().Add(60 * time.Second)
	for {
		if d.ping() == nil {
			if hadDocker0 && !hasLink("docker0") {
				d.t.Fatal("the private dockerd deleted the system engine's docker0 bridge")
			}
			return
		}
		select {
		case <-done:
			d.t.Fatalf("private dockerd exited during start:\n%s", d.logTail())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("private dockerd did not answer within 60s:\n%s", d.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *Dockerd) ping() error {
	cli, err := client.NewClientWithOpts(client.WithHost(d.Host), client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = cli.Ping(ctx)
	return err
}

// Kill sends SIGKILL to dockerd, like a crash of the engine. Its
// supervised containerd dies with it (dockerd starts it with a parent-death
// signal) but can linger as a zombie, which the next dockerd would take for
// a live containerd and wait on until it times out; so Kill waits for it to
// die and removes its pidfile. The containers' shims keep running, and the
// next Start restores (without live-restore: stops) their containers.
func (d *Dockerd) Kill() {
	d.signalAndWait(syscall.SIGKILL, 30*time.Second)
	pidfile := filepath.Join(d.dir, "exec", "containerd", "containerd.pid")
	killPidfile(pidfile, syscall.SIGKILL)
	_ = os.Remove(pidfile)
}

// Stop stops dockerd gracefully (SIGTERM: it stops its containers), and
// kills it if it takes more than 30s.
func (d *Dockerd) Stop() {
	if !d.signalAndWait(syscall.SIGTERM, 30*time.Second) {
		d.signalAndWait(syscall.SIGKILL, 30*time.Second)
	}
}

// Start starts dockerd again on the same socket and data after Kill/Stop.
func (d *Dockerd) Start() {
	d.t.Helper()
	d.start()
}

// Restart kills dockerd (SIGKILL) and starts it again.
func (d *Dockerd) Restart() {
	d.t.Helper()
	d.Kill()
	d.start()
}

// signalAndWait reports whether dockerd exited within timeout (or was not
// running).
func (d *Dockerd) signalAndWait(sig syscall.Signal, timeout time.Duration) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return true
	}
	select {
	case <-d.done:
	default:
		_ = d.cmd.Process.Signal(sig)
		select {
		case <-d.done:
		case <-time.After(timeout):
			return false
		}
	}
	d.cmd = nil
	_ = d.logf.Close()
	return true
}

func (d *Dockerd) logTail() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

func (d *Dockerd) cleanup() {
	// Remove what the test left, so the graceful stop has nothing to wait
	// for and containerd holds no state for our namespace afterwards.
	if d.ping() == nil {
		if cli, err := client.NewClientWithOpts(client.WithHost(d.Host), client.WithAPIVersionNegotiation()); err == nil {
			removeAllContainers(cli)
			cli.Close()
		}
	}
	d.Stop()
	// A dockerd that was killed leaves its supervised containerd running,
	// and shims (with their containers) whose dockerd could not stop them.
	killPidfile(filepath.Join(d.dir, "exec", "containerd", "containerd.pid"), syscall.SIGTERM)
	killShims(d.t, d.dir)
	unmountUnder(d.dir)
	if out, err := exec.Command("ip", "link", "del", d.bridge).CombinedOutput(); err != nil {
		d.t.Logf("delete bridge %s: %v: %s", d.bridge, err, out)
	}
	if err := os.RemoveAll(d.dir); err != nil {
		d.t.Logf("remove private dockerd dir %s: %v", d.dir, err)
	}
}

func removeAllContainers(cli *client.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return
	}
	for _, c := range list {
		_ = cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
}

// killPidfile signals the containerd named by a pidfile (only if its
// command line names the pidfile's directory) and waits up to 5s for it
// to exit or become a zombie.
func killPidfile(path string, sig syscall.Signal) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !strings.Contains(string(cmdline), filepath.Dir(path)) {
		return
	}
	_ = syscall.Kill(pid, sig)
	for range 100 {
		if !running(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

// unmountUnder detaches every mount below dir (netns bind mounts and the
// like that a killed dockerd can leave), deepest first.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			mounts = append(mounts, fields[4])
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// killShims kills containerd shims started for this engine (their command
// line names its directory) together with the container processes below
// them, and removes the containers' now empty cgroups. It only runs when a
// test left the engine unable to stop its own containers.
func killShims(t testing.TB, dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.HasSuffix(args[0], "containerd-shim-runc-v2") || !strings.Contains(string(b), dir+"/") {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if err != nil {
			continue
		}
		id := ""
		for i, a := range args {
			if a == "-id" && i+1 < len(args) {
				id = args[i+1]
			}
		}
		t.Logf("private dockerd cleanup: killing leftover shim %d for container %s", pid, id)
		children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		for _, c := range strings.Fields(string(children)) {
			if cp, err := strconv.Atoi(c); err == nil && cp > 1 {
				_ = syscall.Kill(cp, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if id != "" && !strings.ContainsAny(id, "/.") {
			dirs, _ := filepath.Glob("/sys/fs/cgroup/*/docker/" + id)
			if st, err := os.Stat("/sys/fs/cgroup/docker/" + id); err == nil && st.IsDir() {
				dirs = append(dirs, "/sys/fs/cgroup/docker/"+id)
			}
			time.Sleep(200 * time.Millisecond)
			for _, cg := range dirs {
				_ = os.Remove(cg)
			}
		}
	}
}

func hasLink(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}
