package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/per-docker-roles/per-docker-roles/internal/config"
	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
)

// bpfCommand implements `per-docker-roles bpf status|detach`.
func bpfCommand(args []string, stdout, stderr io.Writer) int {
	usage := func() int {
		fmt.Fprintln(stderr, "usage: per-docker-roles bpf status|detach [--bpf-pin-dir DIR]")
		return 2
	}
	if len(args) == 0 {
		return usage()
	}
	verb := args[0]
	fs := flag.NewFlagSet("per-docker-roles bpf "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	pinDir := fs.String("bpf-pin-dir", config.Default().BPFPinDir, "bpffs directory where programs, links and maps are pinned ["+config.EnvName("bpf-pin-dir")+"]")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if err := config.ApplyEnv(fs, os.Getenv); err != nil {
		fmt.Fprintf(stderr, "per-docker-roles: %v\n", err)
		return 2
	}
	switch verb {
	case "status":
		st, err := redirect.ReadStatus(*pinDir)
		if err != nil {
			fmt.Fprintf(stderr, "per-docker-roles bpf status: %v\n", err)
			return 1
		}
		fmt.Fprint(stdout, st.String())
		return 0
	case "detach":
		if err := redirect.Detach(*pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "per-docker-roles bpf detach: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "detached; pins under %s removed\n", *pinDir)
		return 0
	default:
		return usage()
	}
}
