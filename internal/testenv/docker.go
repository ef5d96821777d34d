package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"maps"
	"regexp"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
)

// NamePrefix starts the name of every container, image and network these
// helpers create, so leftovers are recognisable (and never confused with
// another engineer's or the operator's).
const NamePrefix = "pdrtest-"

// Docker returns a client for the system dockerd (DOCKER_HOST or the
// default socket), with API version negotiation: the engine here is older
// than the client library. It skips or fails the test (per
// PDR_REQUIRE_PRIVILEGED) when not root or when no engine answers.
func Docker(t testing.TB) *client.Client {
	t.Helper()
	RequirePrivileged(t)
	return dockerClient(t, "")
}

// DockerHost returns a client for the engine at host ("unix:///...").
func DockerHost(t testing.TB, host string) *client.Client {
	t.Helper()
	return dockerClient(t, host)
}

func dockerClient(t testing.TB, host string) *client.Client {
	t.Helper()
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		t.Fatalf("docker client %q: %v", host, err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		Unsupported(t, "a reachable dockerd", err)
	}
	return cli
}

// UniqueName returns NamePrefix + a sanitised form of the test name + a
// random suffix: unique across parallel tests and concurrent engineers.
func UniqueName(t testing.TB, what string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	base := nameSanitizer.ReplaceAllString(strings.ToLower(t.Name()), "-")
	if len(base) > 40 {
		base = base[len(base)-40:]
	}
	base = strings.Trim(base, "-.")
	if what != "" {
		base += "-" + what
	}
	return NamePrefix + base + "-" + hex.EncodeToString(b[:])
}

var nameSanitizer = regexp.MustCompile(`[^a-z0-9_.-]+`)

// ContainerOpts describes a test container.
type ContainerOpts struct {
	Name    string            // "" = UniqueName(t, "")
	Image   string            // required, e.g. from HolderImage
	Cmd     []string          // arguments after the image's ENTRYPOINT
	Env     []string          // KEY=VALUE
	Labels  map[string]string // container labels (role labels, ...)
	Network string            // HostConfig.NetworkMode: "" (default bridge), "host", "none", "container:<id>", a network name
	// Aliases/IPv4 for a user-defined network; ignored otherwise.
	IPv4       string
	CapAdd     []string
	Privileged bool
	// CgroupnsHost / CgroupnsPrivate set --cgroupns (default: the
	// engine's; host on cgroup v1 hosts like this one).
	CgroupnsHost    bool
	CgroupnsPrivate bool
	// Binds are host:container[:ro] bind mounts.
	Binds []string
	// NoStart creates the container without starting it.
	NoStart bool
}

// RunContainer creates and starts a container and returns its id. The
// container is force-removed in t.Cleanup.
func RunContainer(t testing.TB, cli *client.Client, o ContainerOpts) string {
	t.Helper()
	if o.Image == "" {
		t.Fatal("RunContainer: Image is required")
	}
	if o.Name == "" {
		o.Name = UniqueName(t, "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := &container.Config{
		Image:  o.Image,
		Cmd:    o.Cmd,
		Env:    o.Env,
		Labels: maps.Clone(o.Labels),
	}
	hc := &container.HostConfig{
		NetworkMode: container.NetworkMode(o.Network),
		CapAdd:      o.CapAdd,
		Privileged:  o.Privileged,
		Binds:       o.Binds,
	}
	switch {
	case o.CgroupnsHost:
		hc.CgroupnsMode = container.CgroupnsModeHost
	case o.CgroupnsPrivate:
		hc.CgroupnsMode = container.CgroupnsModePrivate
	}
	var nc *network.NetworkingConfig
	if o.IPv4 != "" && o.Network != "" {
		nc = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			o.Network: {IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: o.IPv4}},
		}}
	}
	created, err := cli.ContainerCreate(ctx, cfg, hc, nc, nil, o.Name)
	if err != nil {
		t.Fatalf("create container %s (%s): %v", o.Name, o.Image, err)
	}
	id := created.ID
	t.Cleanup(func() { RemoveContainer(t, cli, id) })
	if o.NoStart {
		return id
	}
	if err := cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		t.Fatalf("start container %s: %v", o.Name, err)
	}
	return id
}

// RemoveContainer force-removes a container, ignoring "not found".
func RemoveContainer(t testing.TB, cli *client.Client, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
	if err != nil && !cerrdefs.IsNotFound(err) && !strings.Contains(err.Error(), "is already in progress") {
		t.Errorf("remove container %s: %v", id, err)
	}
}

// Inspect returns a container's inspect data, failing the test on error.
func Inspect(t testing.TB, cli *client.Client, id string) container.InspectResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := cli.ContainerInspect(ctx, id)
	if err != nil {
		t.Fatalf("inspect container %s: %v", id, err)
	}
	return r
}

// CreateNetwork creates a user-defined bridge network with a unique name
// (Docker picks a free subnet) and removes it in t.Cleanup. It returns the
// network's name.
func CreateNetwork(t testing.TB, cli *client.Client) string {
	t.Helper()
	name := UniqueName(t, "net")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge"}); err != nil {
		t.Fatalf("create network %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cli.NetworkRemove(ctx, name); err != nil && !cerrdefs.IsNotFound(err) {
			t.Errorf("remove network %s: %v", name, err)
		}
	})
	return name
}

// WaitFor polls cond every few milliseconds until it holds or timeout
// passes, and returns how long it took; it fails the test on timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
