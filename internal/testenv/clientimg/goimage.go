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

// goDockerfile: the binary is static and the harness speaks plain http to
// its fakes, so the image needs nothing else (no CA bundle, no passwd).
const goDockerfile = `FROM scratch
COPY goclient /goclient
ENTRYPOINT ["/goclient"]
`

// GoImage builds (or reuses) the Go client image. The context holds the
// static binary, built with -trimpath so equal sources give equal bytes.
func GoImage(ctx context.Context, cli *client.Client) (Image, error) {
	var im Image
	start := time.Now()
	root, err := ModuleRoot(ctx)
	if err != nil {
		return im, err
	}
	dir, err := os.MkdirTemp("", "pdr-goclient-")
	if err != nil {
		return im, fmt.Errorf("build goclient: %w", err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "goclient")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", bin, GoClientPkg)
	cmd.Dir = root
	// GOOS/GOARCH stay the host's: the images run on this machine's dockerd.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		return im, fmt.Errorf("go build %s: %w: %s", GoClientPkg, err, out)
	}
	bc, err := spool(func(tw *tarWriter) error {
		if err := tw.addBytes("Dockerfile", 0o644, []byte(goDockerfile)); err != nil {
			return err
		}
		return tw.addFile("goclient", bin)
	})
	if err != nil {
		return im, err
	}
	defer bc.Close()
	im.Prepare = time.Since(start)
	if err := ensure(ctx, cli, GoRepo, bc, &im); err != nil {
		return im, err
	}
	return im, nil
}
