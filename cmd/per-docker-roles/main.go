// Command per-docker-roles gives every Docker container its own AWS IAM
// role through an IMDS-compatible proxy. main parses flags into a config,
// builds the components and runs them under one context cancelled on
// SIGINT/SIGTERM; the wiring lives in run.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/per-docker-roles/per-docker-roles/internal/config"
)

// Stamped by the release build (-ldflags -X main.version=...).
var (
	version = "dev"
	commit  = "unknown"
	date    = "unknown"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

// realMain returns the process exit code: 0 on a clean stop, 1 when
// something failed, 2 for usage errors.
func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "--version", "-version", "version":
			fmt.Fprintf(stdout, "per-docker-roles %s (commit %s, built %s)\n", version, commit, date)
			return 0
		case "bpf":
			return bpfCommand(args[1:], stdout, stderr)
		case "doctor":
			return doctorCommand(args[1:], stdout, stderr)
		}
	}
	cfg, code, ok := parseFlags("per-docker-roles", args, stderr)
	if !ok {
		return code
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "per-docker-roles: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, stderr); err != nil {
		fmt.Fprintf(stderr, "per-docker-roles: %v\n", err)
		return 1
	}
	return 0
}

// parseFlags parses the daemon's flags and PDR_* environment for the
// command name; when ok is false the process exits with code (0 after
// --help, 2 for usage errors, already reported on stderr).
func parseFlags(name string, args []string, stderr io.Writer) (cfg config.Config, code int, ok bool) {
	cfg, fs, err := config.Parse(name, args, os.Getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return cfg, 0, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return cfg, 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q (see --help)\n", name, fs.Arg(0))
		return cfg, 2, false
	}
	return cfg, 0, true
}
