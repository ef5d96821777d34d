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
	"strings"
	"syscall"
	"time"
)

func main() {
	sub := flag.String("subcgroup", "", "create this sub-cgroup under the container's cgroup2 directory (mounted at -cgroupfs) and move into it")
	cgfs := flag.String("cgroupfs", "/sys/fs/cgroup", "where the container's cgroup2 hierarchy is mounted inside the container")
	mountCg := flag.Bool("mountcgroup", false, "mount cgroup2 at -cgroupfs first if it is not one (needs CAP_SYS_ADMIN; use a private cgroup namespace so the mount shows only the container's own subtree)")
	lifetime := flag.Duration("lifetime", time.Hour, "exit by itself after this long, so a leaked container does not run forever")
	flag.Parse()

	if *sub != "" {
		if err := moveToSub(*cgfs, *sub, *mountCg); err != nil {
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

// cgroup2Magic is CGROUP2_SUPER_MAGIC, the f_type of a cgroup2 mount.
const cgroup2Magic = 0x63677270

func moveToSub(cgfs, sub string, mountIt bool) error {
	if !isCgroup2(cgfs) {
		if !mountIt {
			return fmt.Errorf("%s is not a cgroup2 mount (try -mountcgroup)", cgfs)
		}
		if err := os.MkdirAll(cgfs, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", cgfs, err)
		}
		if err := syscall.Mount("none", cgfs, "cgroup2", 0, ""); err != nil {
			return fmt.Errorf("mount cgroup2 at %s: %w", cgfs, err)
		}
	}
	dir := filepath.Join(cgfs, sub)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	procs := filepath.Join(dir, "cgroup.procs")
	if err := os.WriteFile(procs, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", procs, err)
	}
	// Prove it: the kernel's view of our cgroup must now end in sub.
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			if !strings.HasSuffix(p, "/"+strings.Trim(sub, "/")) {
				return fmt.Errorf("still in cgroup %s after moving to %s", p, sub)
			}
			return nil
		}
	}
	return fmt.Errorf("no cgroup2 line in /proc/self/cgroup: %q", b)
}

func isCgroup2(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == cgroup2Magic
}
