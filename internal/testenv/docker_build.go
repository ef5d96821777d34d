package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// hashLabel is the image label holding the sha256 of the binary inside, so
// a rebuild is skipped when the image already holds the same binary.
const hashLabel = "pdr.testenv.binary-sha256"

// buildMu serialises image builds within one test binary: parallel tests
// asking for the same image then build it once. (Test binaries of other
// packages may build the same tag concurrently; the engine copes, and both
// produce the same content.)
var buildMu sync.Mutex

// BuildOption changes how BuildGoImage behaves.
type BuildOption func(*buildOpts)

type buildOpts struct {
	remove bool
}

// RemoveImageAfter removes the image in t.Cleanup. By default images are
// kept so later tests (and later runs) reuse them.
func RemoveImageAfter() BuildOption { return func(o *buildOpts) { o.remove = true } }

// BuildGoImage builds the Go main package in pkgDir (absolute, or relative
// to the test's working directory) as a static binary (CGO_ENABLED=0) and
// wraps it in a FROM scratch image tagged tag, with the binary at /app as
// the ENTRYPOINT. The build is skipped when tag already holds the same
// binary (content hash). It returns tag.
func BuildGoImage(t testing.TB, cli *client.Client, tag, pkgDir string, opts ...BuildOption) string {
	t.Helper()
	var o buildOpts
	for _, f := range opts {
		f(&o)
	}
	buildMu.Lock()
	defer buildMu.Unlock()

	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Dir = pkgDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkgDir, err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	hash := hex.EncodeToString(sum[:])

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if o.remove {
		t.Cleanup(func() { RemoveImage(t, cli, tag) })
	}
	if ins, err := cli.ImageInspect(ctx, tag); err == nil && ins.Config != nil && ins.Config.Labels[hashLabel] == hash {
		return tag
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dockerfile := []byte("FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n")
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, dockerfile}, {"app", 0o755, data}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.ImageBuild(ctx, &buf, build.ImageBuildOptions{
		Tags:        []string{tag},
		Labels:      map[string]string{hashLabel: hash},
		Remove:      true,
		ForceRemove: true,
		Version:     build.BuilderV1, // the engine here has no BuildKit
	})
	if err != nil {
		t.Fatalf("build image %s: %v", tag, err)
	}
	defer resp.Body.Close()
	if err := readJSONStream(resp.Body); err != nil {
		t.Fatalf("build image %s: %v", tag, err)
	}
	return tag
}

// readJSONStream drains a build/load progress stream and returns the first
// error it reports.
func readJSONStream(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("read progress stream: %w", err)
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return errors.New(m.ErrorDetail.Message)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}

// RemoveImage removes an image by reference, ignoring "not found".
func RemoveImage(t testing.TB, cli *client.Client, ref string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !cerrdefs.IsNotFound(err) {
		t.Errorf("remove image %s: %v", ref, err)
	}
}

// HolderImage builds (once, cached by content) the scratch image of
// testdata/holder: a static program that stays up until SIGTERM (see its
// flags: -subcgroup, -lifetime). It returns the image tag.
func HolderImage(t testing.TB, cli *client.Client) string {
	t.Helper()
	return BuildGoImage(t, cli, NamePrefix+"holder:latest", filepath.Join(sourceDir(t), "testdata", "holder"))
}

// sourceDir is the directory of this package's sources, so testdata is
// found whichever package's test calls in.
func sourceDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate testenv sources")
	}
	return filepath.Dir(file)
}

// CopyImage copies an image from one engine to another (docker save |
// docker load), e.g. from the system dockerd into a PrivateDockerd, which
// cannot pull or see the system engine's images.
func CopyImage(t testing.TB, from, to *client.Client, ref string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rc, err := from.ImageSave(ctx, []string{ref})
	if err != nil {
		t.Fatalf("save image %s: %v", ref, err)
	}
	defer rc.Close()
	resp, err := to.ImageLoad(ctx, rc, client.ImageLoadWithQuiet(true))
	if err != nil {
		t.Fatalf("load image %s: %v", ref, err)
	}
	defer resp.Body.Close()
	if err := readJSONStream(resp.Body); err != nil {
		t.Fatalf("load image %s: %v", ref, err)
	}
}
