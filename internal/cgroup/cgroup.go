// Package cgroup finds the cgroup2 hierarchy and translates between cgroup
// ids (what bpf_get_current_cgroup_id returns), directories and processes.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrNoCgroup2 means no cgroup2 filesystem is mounted on this host.
var ErrNoCgroup2 = errors.New("no cgroup2 filesystem mounted")

// Mount returns the mount point of the cgroup2 hierarchy, read from
// /proc/self/mountinfo (/sys/fs/cgroup on pure v2 hosts,
// /sys/fs/cgroup/unified on hybrid ones).
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// 36 35 0:32 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw
		fields := strings.Fields(sc.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && i >= 4 {
				if fields[i+1] == "cgroup2" {
					return unescapeMount(fields[4]), nil
				}
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", ErrNoCgroup2
}

// unescapeMount undoes the octal escapes (\040 for space ...) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ID returns the cgroup id of a cgroup2 directory: its inode number.
func ID(dir string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", dir, err)
	}
	return st.Ino, nil
}

// ProcPath returns the cgroup2 path (relative to the mount, starting with
// "/") of process pid, from the "0::" line of /proc/<pid>/cgroup.
func ProcPath(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	return parseProcCgroup(string(b))
}

func parseProcCgroup(s string) (string, error) {
	for _, line := range strings.Split(s, "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("no cgroup2 (0::) entry: %w", ErrNoCgroup2)
}

// ErrNotFound means no cgroup directory has the requested id.
var ErrNotFound = errors.New("cgroup id not found")

// errStop ends a walk early.
var errStop = errors.New("stop")

// PathByID finds the directory (relative to mount) whose inode is id,
// searching under mount+under. The walk is bounded by maxDirs so a
// pathological tree cannot stall a request.
func PathByID(mount, under string, id uint64, maxDirs int) (string, error) {
	root := filepath.Join(mount, under)
	found := ""
	seen := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			return fs.SkipDir // a cgroup removed mid-walk
		}
		if !d.IsDir() {
			return nil
		}
		seen++
		if seen > maxDirs {
			return fmt.Errorf("more than %d cgroups under %s", maxDirs, root)
		}
		info, err := d.Info()
		if err != nil {
			return fs.SkipDir
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Ino == id {
			rel, _ := filepath.Rel(mount, p)
			found = "/" + strings.TrimPrefix(rel, ".")
			found = filepath.Clean(found)
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		return found, nil
	}
	if err != nil {
		return "", fmt.Errorf("find cgroup %d under %s: %w", id, root, err)
	}
	return "", fmt.Errorf("cgroup %d under %s: %w", id, root, ErrNotFound)
}
