package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
		err            error
	}{
		{
			name: "hybrid",
			in: "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n" +
				"26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n",
			want: "/sys/fs/cgroup/unified",
		},
		{
			name: "pure v2 with optional fields",
			in:   "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate\n",
			want: "/sys/fs/cgroup",
		},
		{
			name: "escaped space",
			in:   "30 23 0:26 / /mnt/cg\\040two rw - cgroup2 none rw\n",
			want: "/mnt/cg two",
		},
		{
			name: "v1 only",
			in:   "31 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
			err:  ErrNoCgroup2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseMountinfo(strings.NewReader(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	t.Parallel()
	got, err := parseProcCgroup("12:pids:/docker/abc\n1:name=systemd:/docker/abc\n0::/docker/abc\n")
	if err != nil || got != "/docker/abc" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := parseProcCgroup("1:cpu:/x\n"); !errors.Is(err, ErrNoCgroup2) {
		t.Fatalf("v1-only: err = %v", err)
	}
}

func TestPathByID(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	leaf := filepath.Join(root, "docker", "abc", "sub")
	if err := os.MkdirAll(leaf, 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := ID(leaf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := PathByID(root, "/docker", id, 100)
	if err != nil || got != "/docker/abc/sub" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := PathByID(root, "/docker", id+12345, 100); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing id: err = %v", err)
	}
	if _, err := PathByID(root, "/", id+12345, 2); err == nil {
		t.Fatal("walk bound not enforced")
	}
}

func TestMountAndSelf(t *testing.T) {
	t.Parallel()
	m, err := Mount()
	if errors.Is(err, ErrNoCgroup2) {
		t.Skip("no cgroup2 on this host")
	}
	if err != nil {
		t.Fatal(err)
	}
	p, err := ProcPath(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ID(filepath.Join(m, p)); err != nil {
		t.Fatal(err)
	}
}
