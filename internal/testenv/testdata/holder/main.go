// Command holder is a tiny static program for scratch-image test containers:
// it stays up until SIGTERM/SIGINT so the container keeps running, and can
// optionally move itself into a sub-cgroup it creates (for nearest-ancestor
// cgroup resolution tests). It prints one line per step so a test can read
// what happened from the container's logs.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

func main() {
	sub := flag.String("subcgroup", "", "create this sub-cgroup under the container's cgroup2 directory (mounted at -cgroupfs) and move into it")
	cgfs := flag.String("cgroupfs", "/sys/fs/cgroup", "where the container's cgroup2 hierarchy is mounted inside the container")
	lifetime := flag.Duration("lifetime", time.Hour, "exit by itself after this long, so a leaked container does not run forever")
	flag.Parse()

	if *sub != "" {
		if err := moveToSub(*cgfs, *sub); err != nil {
			fmt.Println("subcgroup error:", err)
		} else {
			fmt.Println("subcgroup ok:", *sub)
		}
	}
	fmt.Println("holder ready, pid", os.Getpid())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		fmt.Println("holder exiting on", s)
	case <-time.After(*lifetime):
		fmt.Println("holder exiting after", *lifetime)
	}
}

func moveToSub(cgfs, sub string) error {
	dir := filepath.Join(cgfs, sub)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	procs := filepath.Join(dir, "cgroup.procs")
	if err := os.WriteFile(procs, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", procs, err)
	}
	return nil
}
