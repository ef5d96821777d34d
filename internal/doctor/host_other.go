//go:build !linux

package doctor

import (
	"fmt"
	"io"
	"io/fs"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// errNotLinux is what every probe answers off Linux.
var errNotLinux = fmt.Errorf("not Linux: %w", fs.ErrNotExist)

func realHost() *hostProbes {
	return &hostProbes{
		uname:       func() (string, string, error) { return "", "", errNotLinux },
		procStatus:  func() (io.ReadCloser, error) { return nil, errNotLinux },
		mountinfo:   func() (io.ReadCloser, error) { return nil, errNotLinux },
		programType: func(ebpf.ProgramType) error { return errNotLinux },
		attachType:  func(ebpf.ProgramType, ebpf.AttachType) error { return errNotLinux },
		helper:      func(ebpf.ProgramType, asm.BuiltinFunc) error { return errNotLinux },
		mapType:     func(ebpf.MapType) error { return errNotLinux },
		netnsCookie: func() error { return errNotLinux },
		btf:         func() error { return errNotLinux },
		cgroup2:     func() (string, error) { return "", errNotLinux },
		cgroupID:    func(string) (uint64, error) { return 0, errNotLinux },
		procCgroup:  func(int) (string, error) { return "", errNotLinux },
	}
}
