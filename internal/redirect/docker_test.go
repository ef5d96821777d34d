//go:build linux

package redirect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

// accepted is what the test proxy learnt about one connection.
type accepted struct {
	peer netip.AddrPort
	rec  Record
	err  error
}

// serveRecords accepts on ln, looks each peer up (as the proxy does at
// accept), answers "pong" and reports on ch.
func serveRecords(ln *net.TCPListener, r *Redirector, ch chan<- accepted) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		p := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		p = netip.AddrPortFrom(p.Addr().Unmap(), p.Port())
		rec, err := r.Lookup(p)
		ch <- accepted{peer: p, rec: rec, err: err}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		_, _ = c.Read(buf)
		_, _ = c.Write([]byte("pong\n"))
		c.Close()
	}
}

// dockerParent creates a cgroup that test containers are placed under
// with --cgroup-parent, so the programs attach to a subtree this test owns
// and never touch other containers on the shared dockerd.
func dockerParent(t *testing.T) (name, dir string) {
	t.Helper()
	mnt, err := cgroup.Mount()
	if err != nil {
		testenv.Unsupported(t, "cgroup2", err)
	}
	name = "pdrtest-redir-" + randHex(t, 4)
	dir = filepath.Join(mnt, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// runc also creates the parent in each cgroup v1 hierarchy.
		v1, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
		for _, d := range append(v1, dir) {
			for i := 0; i < 50; i++ {
				if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	})
	return name, dir
}

type dockerCase struct {
	cli     *client.Client
	image   string
	parent  string
	network string
	args    []string
}

// runDialer runs the dialer image under the test's cgroup parent and
// returns its id and cgroup id (read while it runs).
func runDialer(t *testing.T, d dockerCase) (string, uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := testenv.UniqueName(t, "dialer")
	created, err := d.cli.ContainerCreate(ctx,
		&container.Config{Image: d.image, Cmd: d.args},
		&container.HostConfig{NetworkMode: container.NetworkMode(d.network), Resources: container.Resources{CgroupParent: "/" + d.parent}},
		nil, nil, name)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	id := created.ID
	t.Cleanup(func() { testenv.RemoveContainer(t, d.cli, id) })
	if err := d.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pid := testenv.Inspect(t, d.cli, id).State.Pid
	p, err := cgroup.ProcPath(pid)
	if err != nil {
		t.Fatalf("cgroup of container %s: %v", name, err)
	}
	if !strings.HasPrefix(p, "/"+d.parent+"/") {
		t.Fatalf("container cgroup %s is not under the test's parent %s", p, d.parent)
	}
	mnt, _ := cgroup.Mount()
	cgID, err := cgroup.ID(filepath.Join(mnt, p))
	if err != nil {
		t.Fatal(err)
	}
	return id, cgID
}

// dialerResult waits for the container to exit and parses its line.
func dialerResult(t *testing.T, cli *client.Client, id string) helperEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitC, errC := cli.ContainerWait(ctx, id, container.WaitConditionNotRunning)
	select {
	case <-waitC:
	case err := <-errC:
		t.Fatalf("wait for %s: %v", id, err)
	}
	rc, err := cli.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out, errb bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &errb, rc); err != nil {
		t.Fatal(err)
	}
	var ev helperEvent
	if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &ev); err != nil {
		t.Fatalf("dialer output %q (stderr %q): %v", out.String(), errb.String(), err)
	}
	return ev
}

// TestDockerNetworkModes runs real containers on the default bridge, a
// user-defined bridge, the host network and another container's network,
// and checks that each is redirected and recorded under its own cgroup.
func TestDockerNetworkModes(t *testing.T) {
	testenv.Blackhole(t)
	cli := testenv.Docker(t)
	image := testenv.BuildGoImage(t, cli, testenv.NamePrefix+"redirect-dialer:latest", "testdata/dialer")
	parent, dir := dockerParent(t)
	pins := pinDir(t)
	nsAddr := netip.MustParseAddr("169.254.198." + strconv.Itoa(1+int(subnetSeq.Add(1))%250))
	iface := "pdrd" + randHex(t, 3)
	t.Cleanup(func() { _ = runIP("link", "del", iface) })

	hostLn, host := listen(t, "tcp4", "127.0.0.1:0")
	_, probe := listen(t, "tcp4", "127.0.0.1:0")
	r := newRedirector(t, Config{
		CgroupPath: dir, PinDir: pins, HostTarget: host,
		NSTarget:  netip.AddrPortFrom(nsAddr, probe.Port()),
		Interface: iface, ExemptCgroups: []uint64{}, GuardAddrs: []netip.AddrPort{},
	})
	nsLn, _ := listen(t, "tcp4", netip.AddrPortFrom(nsAddr, probe.Port()).String())
	got := make(chan accepted, 8)
	go serveRecords(hostLn, r, got)
	go serveRecords(nsLn, r, got)

	owner := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: testenv.HolderImage(t, cli), Cmd: []string{"-lifetime", "2m"}})
	userNet := testenv.CreateNetwork(t, cli)

	for _, tc := range []struct {
		name     string
		network  string
		hostNets bool
	}{
		{"default bridge", "", false},
		{"user network", userNet, false},
		{"host network", "host", true},
		{"container network", "container:" + owner, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, cgID := runDialer(t, dockerCase{cli: cli, image: image, parent: parent, network: tc.network,
				args: []string{"-delay", "300ms", "-linger", "1s"}})
			var a accepted
			select {
			case a = <-got:
			case <-time.After(15 * time.Second):
				t.Fatal("no connection reached the proxy")
			}
			if a.err != nil {
				t.Fatalf("Lookup(%s): %v", a.peer, a.err)
			}
			if a.rec.CgroupID != cgID {
				t.Errorf("record cgroup %d, want the container's %d", a.rec.CgroupID, cgID)
			}
			if a.rec.HostNetns != tc.hostNets || a.rec.OrigDst != imds4 {
				t.Errorf("record = %+v, want host netns %v, orig %s", a.rec, tc.hostNets, imds4)
			}
			if tc.hostNets && a.peer.Addr() != netip.MustParseAddr("127.0.0.1") {
				t.Errorf("host-network caller seen as %s, want loopback (no MASQUERADE)", a.peer)
			}
			ev := dialerResult(t, cli, id)
			if ev.Reply != "pong" || ev.Peer != imds4.String() {
				t.Errorf("container saw %+v, want pong from %s", ev, imds4)
			}
		})
	}
}

func runIP(args ...string) error {
	return ip(args...)
}
