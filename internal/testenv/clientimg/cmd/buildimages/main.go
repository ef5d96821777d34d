// Command buildimages builds the end-to-end SDK client images (Go and
// Python) on the local dockerd and prints their tags as shell assignments,
// for the demo script:
//
//	eval "$(go run ./internal/testenv/clientimg/cmd/buildimages)"
//	docker run --rm "$PDR_GOCLIENT_IMAGE" whoami
//
// Build times go to stderr.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/docker/docker/client"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv/clientimg"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "buildimages:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	defer cli.Close()
	for _, b := range []struct {
		env   string
		build func(context.Context, *client.Client) (clientimg.Image, error)
	}{
		{"PDR_GOCLIENT_IMAGE", clientimg.GoImage},
		{"PDR_PYCLIENT_IMAGE", clientimg.PythonImage},
	} {
		im, err := b.build(ctx, cli)
		if err != nil {
			return err
		}
		fmt.Fprintln(stderr, "buildimages:", im)
		fmt.Fprintf(stdout, "%s=%s\n", b.env, im.Tag)
	}
	return nil
}
