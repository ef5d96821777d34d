package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

func TestUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no victim", nil},
		{"two victims", []string{"10.0.0.1", "10.0.0.2"}},
		{"not an address", []string{"victim"}},
		{"IPv6", []string{"fd00::1"}},
		{"bad flag", []string{"-go-wait", "soon", "10.0.0.1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out, errb bytes.Buffer
			if code := run(context.Background(), tc.args, &out, &errb); code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", code, errb.String())
			}
		})
	}
}

func TestRtattr(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 3, 4, 5, 16} {
		b := rtattr(unix.IFA_LOCAL, bytes.Repeat([]byte{0xab}, n))
		if len(b)%unix.RTA_ALIGNTO != 0 || len(b) < unix.SizeofRtAttr+n {
			t.Errorf("payload %d: attribute of %d bytes is not aligned or too short", n, len(b))
		}
		if l := int(binary.NativeEndian.Uint16(b[0:2])); l != unix.SizeofRtAttr+n {
			t.Errorf("payload %d: rta_len %d, want %d (unpadded)", n, l, unix.SizeofRtAttr+n)
		}
		if typ := binary.NativeEndian.Uint16(b[2:4]); typ != unix.IFA_LOCAL {
			t.Errorf("payload %d: rta_type %d", n, typ)
		}
	}
}

// TestAddAddr adds an address to lo in a network namespace of the test's
// own (on a locked thread that is never reused), twice: the second add
// must be accepted as already done.
func TestAddAddr(t *testing.T) {
	testenv.RequirePrivileged(t)
	errc := make(chan error, 1)
	var addrs []net.Addr
	go func() {
		runtime.LockOSThread() // not unlocked: the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			errc <- err
			return
		}
		ip := netip.MustParseAddr("10.254.3.4")
		for range 2 {
			if err := addAddr(lo.Index, ip, 32); err != nil {
				errc <- err
				return
			}
		}
		addrs, err = lo.Addrs()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.String())
	}
	if !strings.Contains(strings.Join(got, " "), "10.254.3.4/32") {
		t.Errorf("lo addresses %v lack 10.254.3.4/32", got)
	}
	// A bad interface index is an error, not a silent no-op.
	type outcome struct{ unshare, add error }
	done := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- outcome{unshare: err}
			return
		}
		done <- outcome{add: addAddr(1<<20, netip.MustParseAddr("10.254.3.5"), 32)}
	}()
	o := <-done
	if o.unshare != nil {
		t.Fatal(o.unshare)
	}
	if o.add == nil {
		t.Error("adding an address to a missing interface succeeded")
	}
}
