package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/doctor"
)

// doctorCommand checks this host with the daemon's flags and environment
// (so it sees what the daemon would) and prints the checklist. Exit code 1
// when a check failed, 2 for usage errors.
func doctorCommand(args []string, stdout, stderr io.Writer) int {
	cfg, code, ok := parseFlags("per-docker-roles doctor", args, stderr)
	if !ok {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// Each check has its own timeout; this bounds the whole run as well.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	rep := doctor.Run(ctx, cfg, doctor.Deps{})
	if err := rep.Print(stdout); err != nil {
		fmt.Fprintf(stderr, "per-docker-roles doctor: %v\n", err)
		return 1
	}
	return rep.ExitCode()
}
