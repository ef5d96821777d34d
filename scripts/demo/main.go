// Command demo shows per-docker-roles working on this machine: it starts
// the local Roles Anywhere and STS fakes, the real aws_signing_helper serve,
// the daemon with its eBPF redirect, and three containers (two roles, one
// without a label), then prints what each container received. Run it
// through `make demo`, which installs and starts what is missing first.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/docker/docker/client"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv/clientimg"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv/stack"
)

func main() {
	daemon := flag.String("daemon", "bin/per-docker-roles", "per-docker-roles binary")
	keep := flag.Bool("keep", false, "keep the work directory (logs, PKI) after exit")
	verbose := flag.Bool("v", false, "log what the harness does")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *daemon, *keep, *verbose); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(ctx context.Context, daemon string, keep, verbose bool) error {
	daemonPath, err := filepath.Abs(daemon)
	if err != nil {
		return err
	}
	if _, err := os.Stat(daemonPath); err != nil {
		return fmt.Errorf("daemon binary: %w (run make build)", err)
	}
	level := zapcore.WarnLevel
	if verbose {
		level = zapcore.InfoLevel
	}
	logCfg := zap.NewDevelopmentConfig()
	logCfg.Level = zap.NewAtomicLevelAt(level)
	log, err := logCfg.Build()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "pdr-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(work)
	}

	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	defer cli.Close()

	step("building the client images (Go SDK v2, boto3) FROM scratch")
	goImage, err := clientimg.BuildGo(ctx, cli)
	if err != nil {
		return err
	}
	pyImage, err := clientimg.BuildPython(ctx, cli)
	if err != nil {
		return err
	}
	step("building aws_signing_helper v1.4.0 from its Go module (cached after the first time)")
	helper, err := testenv.BuildSigningHelper(ctx, log)
	if err != nil {
		return err
	}

	step("starting the Roles Anywhere and STS fakes on loopback, aws_signing_helper serve, and per-docker-roles")
	s, err := stack.Start(ctx, stack.Config{
		Daemon:     daemonPath,
		Docker:     cli,
		WorkDir:    work,
		HelperPath: helper,
		Log:        log,
	})
	if err != nil {
		return err
	}
	defer func() {
		step("cleaning up: daemon, eBPF programs (%s), network, helper, fakes", s.PinDir)
		s.Close()
	}()
	fmt.Printf("    base role (from Roles Anywhere): %s\n", s.Up.RoleARN)
	fmt.Printf("    helper: %s   daemon admin: %s   eBPF attached to %s\n", s.Up.HelperURL, s.AdminURL, s.CgroupPath)
	if keep {
		fmt.Printf("    daemon log: %s\n", s.LogPath)
	} else {
		fmt.Printf("    daemon log: %s (removed on exit; run with --keep to keep it)\n", s.LogPath)
	}

	type row struct {
		name, image, sdk, role string
	}
	rows := []row{
		{"demo-reader", goImage, "Go SDK v2", "app-reader"},
		{"demo-writer", pyImage, "boto3", "app-writer"},
		{"demo-unlabelled", goImage, "Go SDK v2", ""},
	}
	step("running the containers; each asks 169.254.169.254 through the default SDK chain, then STS GetCallerIdentity")
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nCONTAINER\tSDK\tLABEL per-docker-roles.role\tIDENTITY RECEIVED (GetCallerIdentity)\tEXPIRES")
	for _, r := range rows {
		res, err := s.Run(ctx, stack.Client{Image: r.image, Name: r.name, Role: r.role})
		if err != nil {
			return err
		}
		label, arn, exp := r.role, "-", "-"
		if label == "" {
			label = "(none)"
		}
		if len(res.Lines) > 0 {
			l := res.Lines[0]
			if a, _ := l["arn"].(string); a != "" {
				arn = a
			} else if e, _ := l["error"].(string); e != "" {
				arn = "no credentials: " + shorten(e)
			}
			if e, _ := l["expiration"].(string); e != "" {
				if t, err := time.Parse(time.RFC3339, e); err == nil {
					exp = fmt.Sprintf("%s (in %s)", e, time.Until(t).Round(time.Minute))
				}
			}
		} else {
			arn = "client printed nothing: " + shorten(res.Stderr)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.name, r.sdk, label, arn, exp)
	}
	tw.Flush()
	fmt.Println()
	return nil
}

func shorten(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, "StatusCode: "); i >= 0 {
		return "IMDS answered " + strings.TrimRight(strings.Fields(s[i+len("StatusCode: "):])[0], ",")
	}
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return s
}
