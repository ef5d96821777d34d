// Package clientimg builds the container images of the end-to-end SDK
// clients (e2e/clients/goclient and e2e/clients/pyclient) through the Docker
// Engine API, FROM scratch, because nothing can be pulled on the machines
// the project tests on.
//
// Images are tagged by the SHA-256 of their build context (a deterministic
// tar: sorted entries, fixed owners and times), so an unchanged client is
// never rebuilt and two builders of the same inputs agree on the tag.
package clientimg

import (
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
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/client"
)

// Repositories of the two images; the tag is the context hash.
const (
	GoRepo     = "pdr-e2e-goclient"
	PythonRepo = "pdr-e2e-pyclient"

	// Label marks every image built here, for cleanup by hand:
	// docker image ls --filter label=pdr.e2e=clientimg
	Label = "pdr.e2e"
	// tagLen is how many hex digits of the hash the tag keeps.
	tagLen = 16
)

// Image describes a built (or reused) client image.
type Image struct {
	Tag string // repo:hash
	// Reused is true when an image with this tag already existed.
	Reused bool
	// Prepare is the time spent assembling the context (go build, or
	// collecting the Python rootfs); Build the time spent in ImageBuild.
	Prepare, Build time.Duration
	// ContextBytes is the size of the build context tar.
	ContextBytes int64
}

func (im Image) String() string {
	state := "built"
	if im.Reused {
		state = "reused"
	}
	return fmt.Sprintf("%s %s (context %.1f MiB, prepare %s, build %s)",
		im.Tag, state, float64(im.ContextBytes)/(1<<20),
		im.Prepare.Round(time.Millisecond), im.Build.Round(time.Millisecond))
}

// BuildGo builds the Go client image and returns its tag.
func BuildGo(ctx context.Context, cli *client.Client) (string, error) {
	im, err := GoImage(ctx, cli)
	return im.Tag, err
}

// BuildPython builds the Python (boto3) client image and returns its tag.
func BuildPython(ctx context.Context, cli *client.Client) (string, error) {
	im, err := PythonImage(ctx, cli)
	return im.Tag, err
}

// ModuleRoot returns the directory holding this module's go.mod, found
// with `go env GOMOD` from the working directory (tests run in their
// package directory, the demo script at the repository root).
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// buildContext is a tar build context spooled to a temporary file.
type buildContext struct {
	f    *os.File
	hash string
	size int64
}

func (b *buildContext) Close() error {
	name := b.f.Name()
	err := b.f.Close()
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	return err
}

// spool writes a context with fill, hashing it as it goes.
func spool(fill func(*tarWriter) error) (*buildContext, error) {
	f, err := os.CreateTemp("", "pdr-clientimg-*.tar")
	if err != nil {
		return nil, fmt.Errorf("create build context: %w", err)
	}
	bc := &buildContext{f: f}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	tw := newTarWriter(cw)
	if err := fill(tw); err != nil {
		_ = bc.Close()
		return nil, err
	}
	if err := tw.Close(); err != nil {
		_ = bc.Close()
		return nil, fmt.Errorf("write build context: %w", err)
	}
	bc.hash = hex.EncodeToString(h.Sum(nil))
	bc.size = cw.n
	return bc, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ensure builds bc as repo:<hash> unless that tag exists already.
func ensure(ctx context.Context, cli *client.Client, repo string, bc *buildContext, im *Image) error {
	im.Tag = repo + ":" + bc.hash[:tagLen]
	im.ContextBytes = bc.size
	if _, err := cli.ImageInspect(ctx, im.Tag); err == nil {
		im.Reused = true
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspect image %s: %w", im.Tag, err)
	}
	if _, err := bc.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewind build context: %w", err)
	}
	start := time.Now()
	resp, err := cli.ImageBuild(ctx, bc.f, build.ImageBuildOptions{
		Tags:        []string{im.Tag},
		Dockerfile:  "Dockerfile",
		Remove:      true,
		ForceRemove: true,
		// The engine here is 20.10 without buildx: the classic builder.
		Version: build.BuilderV1,
		Labels:  map[string]string{Label: "clientimg"},
	})
	if err != nil {
		return fmt.Errorf("build image %s: %w", im.Tag, err)
	}
	defer resp.Body.Close()
	if err := readBuildStream(resp.Body); err != nil {
		return fmt.Errorf("build image %s: %w", im.Tag, err)
	}
	im.Build = time.Since(start)
	return nil
}

// errBuild is a failure the daemon reported inside the build stream.
var errBuild = errors.New("daemon build failed")

// readBuildStream drains the build's JSON message stream. The build's
// errors arrive in the stream, not as an HTTP status; the last lines of
// builder output are kept to explain them.
func readBuildStream(r io.Reader) error {
	dec := json.NewDecoder(r)
	var tail []string
	for {
		var msg struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("read build output: %w", err)
		}
		if msg.Stream != "" {
			tail = append(tail, strings.TrimSpace(msg.Stream))
			if len(tail) > 8 {
				tail = tail[1:]
			}
		}
		if msg.Error != "" || msg.ErrorDetail.Message != "" {
			return fmt.Errorf("%w: %s %s (output: %s)", errBuild, msg.Error, msg.ErrorDetail.Message, strings.Join(tail, " | "))
		}
	}
}
