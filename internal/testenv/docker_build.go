package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv/clientimg"
)

// buildMu serialises image builds within one test binary: parallel tests
// asking for the same image then build it once. (Test binaries of other
// packages may build the same image concurrently; the engine copes, and
// both produce the same content.)
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
// to the test's working directory) into a FROM scratch image with the
// static binary as its entrypoint (clientimg.GoPackageImage), in the
// repository of tag (any ":tag" part is replaced by the content hash, so an
// unchanged package is not rebuilt). It returns the image reference.
func BuildGoImage(t testing.TB, cli *client.Client, tag, pkgDir string, opts ...BuildOption) string {
	t.Helper()
	var o buildOpts
	for _, f := range opts {
		f(&o)
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	repo, _, _ := strings.Cut(tag, ":")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	im, err := clientimg.GoPackageImage(ctx, cli, repo, pkgDir)
	if err != nil {
		t.Fatalf("build image %s from %s: %v", repo, pkgDir, err)
	}
	if o.remove {
		t.Cleanup(func() { RemoveImage(t, cli, im.Tag) })
	}
	return im.Tag
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
