package clientimg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/docker/docker/client"
)

// GoClientPkg is the package path of the Go client, relative to the module root.
const GoClientPkg = "./e2e/clients/goclient"

// GoImage builds (or reuses) the Go client image.
func GoImage(ctx context.Context, cli *client.Client) (Image, error) {
	root, err := ModuleRoot(ctx)
	if err != nil {
		return Image{}, err
	}
	return GoPackageImage(ctx, cli, GoRepo, filepath.Join(root, GoClientPkg))
}

// GoPackageImage builds the Go main package in dir (absolute, or relative
// to the working directory) as a static binary and wraps it in a FROM
// scratch image whose entrypoint is that binary, tagged repo:<hash of the
// build context>. The binary is built with -trimpath and no build id, so
// equal sources give equal bytes and an unchanged package is not rebuilt.
// The harness speaks plain http to its fakes, so the image needs nothing
// else (no CA bundle, no passwd).
func GoPackageImage(ctx context.Context, cli *client.Client, repo, dir string) (Image, error) {
	var im Image
	start := time.Now()
	dir, err := filepath.Abs(dir)
	if err != nil {
		return im, fmt.Errorf("build %s: %w", dir, err)
	}
	name := filepath.Base(dir)
	tmp, err := os.MkdirTemp("", "pdr-goimage-")
	if err != nil {
		return im, fmt.Errorf("build %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", bin, ".")
	cmd.Dir = dir
	// GOOS/GOARCH stay the host's: the images run on this machine's dockerd.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		return im, fmt.Errorf("go build %s: %w: %s", dir, err, out)
	}
	dockerfile := fmt.Sprintf("FROM scratch\nCOPY %s /%s\nENTRYPOINT [\"/%s\"]\n", name, name, name)
	bc, err := spool(func(tw *tarWriter) error {
		if err := tw.addBytes("Dockerfile", 0o644, []byte(dockerfile)); err != nil {
			return err
		}
		return tw.addFile(name, bin)
	})
	if err != nil {
		return im, err
	}
	defer bc.Close()
	im.Prepare = time.Since(start)
	if err := ensure(ctx, cli, repo, bc, &im); err != nil {
		return im, err
	}
	return im, nil
}
