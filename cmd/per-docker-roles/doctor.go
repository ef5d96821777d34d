package main

import (
	"fmt"
	"io"
)

// doctorCommand checks this host; see internal/doctor.
func doctorCommand(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "per-docker-roles doctor: not built yet")
	return 1
}
