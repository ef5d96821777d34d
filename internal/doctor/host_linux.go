package doctor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
)

// realHost asks the running kernel. Nothing here attaches or pins: the
// probes load tiny programs and maps and close them at once.
func realHost() *hostProbes {
	return &hostProbes{
		uname: func() (string, string, error) {
			var u unix.Utsname
			if err := unix.Uname(&u); err != nil {
				return "", "", fmt.Errorf("uname: %w", err)
			}
			return unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Machine[:]), nil
		},
		procStatus:  func() (io.ReadCloser, error) { return os.Open("/proc/self/status") },
		mountinfo:   func() (io.ReadCloser, error) { return os.Open("/proc/self/mountinfo") },
		programType: features.HaveProgramType,
		attachType:  probeAttachType,
		helper:      features.HaveProgramHelper,
		mapType:     features.HaveMapType,
		netnsCookie: func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			defer unix.Close(fd)
			if _, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE); err != nil {
				return fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
			}
			return nil
		},
		btf: func() error {
			f, err := os.Open("/sys/kernel/btf/vmlinux")
			if err != nil {
				return err
			}
			return f.Close()
		},
		cgroup2:    cgroup.Mount,
		cgroupID:   cgroup.ID,
		procCgroup: cgroup.ProcPath,
	}
}

// probeAttachType loads a program that only returns "proceed" with the
// given expected attach type. The kernel checks expected_attach_type at
// load time, so an unknown hook (getpeername before 5.8) fails here without
// anything being attached.
func probeAttachType(pt ebpf.ProgramType, at ebpf.AttachType) error {
	if err := features.HaveProgramType(pt); err != nil {
		return err
	}
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:       pt,
		AttachType: at,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	}, ebpf.ProgramOptions{LogDisabled: true})
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.E2BIG) {
		return fmt.Errorf("attach type %s: %w", at, ebpf.ErrNotSupported)
	}
	if err != nil {
		return fmt.Errorf("attach type %s: %w", at, err)
	}
	return prog.Close()
}
