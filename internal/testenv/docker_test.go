package testenv

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
)

func TestBuildGoImageCachesByContent(t *testing.T) {
	cli := Docker(t)
	ctx := context.Background()
	first := time.Now()
	tag := HolderImage(t, cli)
	t1 := time.Since(first)
	a, err := cli.ImageInspect(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	if repo, hash, _ := strings.Cut(tag, ":"); repo != NamePrefix+"holder" || len(hash) != 16 {
		t.Errorf("tag %q is not <repo>:<content hash>", tag)
	}
	second := time.Now()
	if again := HolderImage(t, cli); again != tag {
		t.Errorf("second build tagged %s, first %s", again, tag)
	}
	t2 := time.Since(second)
	b, err := cli.ImageInspect(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != b.ID {
		t.Errorf("second build produced a new image %s (was %s): cache by content hash not used", b.ID, a.ID)
	}
	t.Logf("holder image: first call %v, cached call %v", t1, t2)

	// A throwaway tag removed after its test.
	var tmpTag string
	t.Run("removed after", func(t *testing.T) {
		tmpTag = BuildGoImage(t, cli, UniqueName(t, "img"), sourceDir(t)+"/testdata/holder", RemoveImageAfter())
		if _, err := cli.ImageInspect(ctx, tmpTag); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := cli.ImageInspect(ctx, tmpTag); !cerrdefs.IsNotFound(err) {
		t.Errorf("image %s still present after RemoveImageAfter: %v", tmpTag, err)
	}
}

func TestRunContainerOptions(t *testing.T) {
	cli := Docker(t)
	img := HolderImage(t, cli)
	var id string
	t.Run("run", func(t *testing.T) {
		netName := CreateNetwork(t, cli)
		id = RunContainer(t, cli, ContainerOpts{
			Image:   img,
			Cmd:     []string{"-lifetime", "5m"},
			Env:     []string{"PDR_TEST=1"},
			Labels:  map[string]string{"pdr.role": "x"},
			Network: netName,
			CapAdd:  []string{"NET_ADMIN"},
		})
		r := Inspect(t, cli, id)
		if !r.State.Running {
			t.Fatalf("not running: %+v", r.State)
		}
		if !strings.HasPrefix(r.Name, "/"+NamePrefix) {
			t.Errorf("name %q lacks the %q prefix", r.Name, NamePrefix)
		}
		if r.Config.Labels["pdr.role"] != "x" || !slices.Contains(r.Config.Env, "PDR_TEST=1") {
			t.Errorf("labels %v env %v", r.Config.Labels, r.Config.Env)
		}
		if !slices.Equal(r.Config.Cmd, []string{"-lifetime", "5m"}) || !(slices.Contains(r.HostConfig.CapAdd, "NET_ADMIN") || slices.Contains(r.HostConfig.CapAdd, "CAP_NET_ADMIN")) {
			t.Errorf("cmd %v capadd %v", r.Config.Cmd, r.HostConfig.CapAdd)
		}
		if _, ok := r.NetworkSettings.Networks[netName]; !ok {
			t.Errorf("not on %s: %v", netName, r.NetworkSettings.Networks)
		}
	})
	if _, err := cli.ContainerInspect(context.Background(), id); !cerrdefs.IsNotFound(err) {
		t.Errorf("container %s not removed by cleanup: %v", id, err)
	}
}

func TestPrivateDockerdRestart(t *testing.T) {
	sys := Docker(t)
	img := HolderImage(t, sys)
	var d *Dockerd
	t.Run("engine", func(t *testing.T) {
		d = StartPrivateDockerd(t)
		cli := d.Client(t)
		CopyImage(t, sys, cli, img)
		// Default bridge of its own, and the system engine's docker0 untouched.
		id := RunContainer(t, cli, ContainerOpts{Image: img})
		r := Inspect(t, cli, id)
		if r.NetworkSettings.Networks["bridge"] == nil || r.NetworkSettings.Networks["bridge"].IPAddress == "" {
			t.Errorf("no address on the private default bridge: %+v", r.NetworkSettings.Networks)
		}
		if !hasLink(d.bridge) {
			t.Errorf("private bridge %s missing", d.bridge)
		}
		if _, err := sys.Ping(context.Background()); err != nil {
			t.Errorf("system dockerd: %v", err)
		}
		start := time.Now()
		d.Restart()
		t.Logf("kill -9 + start took %v", time.Since(start))
		r = Inspect(t, cli, id) // same socket, same data
		t.Logf("container after restart: running=%v (no live-restore: stopped by restore)", r.State.Running)
		if err := cli.ContainerStart(context.Background(), id, container.StartOptions{}); err != nil {
			t.Errorf("start the old container again: %v", err)
		}
		d.Stop()
		if d.ping() == nil {
			t.Error("still answering after Stop")
		}
		d.Start()
		if _, err := cli.Ping(context.Background()); err != nil {
			t.Errorf("after Stop/Start: %v", err)
		}
	})
	// Cleanup of the subtest removed everything.
	if _, err := os.Stat(d.dir); !os.IsNotExist(err) {
		t.Errorf("private dockerd dir %s left behind: %v", d.dir, err)
	}
	if hasLink(d.bridge) {
		t.Errorf("bridge %s left behind", d.bridge)
	}
	if running := d.ping() == nil; running {
		t.Error("private dockerd still answers after cleanup")
	}
}
