package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// listen opens a real unixgram socket the way systemd does and returns its
// $NOTIFY_SOCKET spelling.
func listen(t *testing.T, abstract bool) (string, *net.UnixConn) {
	t.Helper()
	var name string
	if abstract {
		name = fmt.Sprintf("@pdr-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	} else {
		// Not t.TempDir(): sun_path holds at most 108 bytes and test temp
		// paths can be longer.
		dir, err := os.MkdirTemp("", "sdn")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		name = filepath.Join(dir, "notify")
	}
	bind := name
	if abstract {
		// Bind with the kernel's own spelling (leading NUL), so the test
		// proves New translates systemd's '@' rather than both sides
		// agreeing on a file literally named "@...".
		bind = "\x00" + name[1:]
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: bind, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen %s: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return name, conn
}

func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotifySendsDatagrams(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		send func(*Notifier) error
		want string
	}{
		{"ready", (*Notifier).Ready, "READY=1"},
		{"stopping", (*Notifier).Stopping, "STOPPING=1"},
		{"status", func(n *Notifier) error { return n.Status("index synced: 3 containers") }, "STATUS=index synced: 3 containers"},
		{"status newline cannot inject a variable", func(n *Notifier) error { return n.Status("x\nREADY=1\r") }, "STATUS=x READY=1 "},
		{"ready with status", func(n *Notifier) error { return n.ReadyStatus("serving\non :80") }, "READY=1\nSTATUS=serving on :80"},
		{"raw", func(n *Notifier) error { return n.Notify("RELOADING=1") }, "RELOADING=1"},
	}
	for _, abstract := range []bool{false, true} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/abstract=%v", tc.name, abstract), func(t *testing.T) {
				t.Parallel()
				sock, conn := listen(t, abstract)
				n, err := New(sock)
				if err != nil {
					t.Fatalf("New(%q): %v", sock, err)
				}
				if !n.Enabled() {
					t.Fatalf("New(%q).Enabled() = false", sock)
				}
				if err := tc.send(n); err != nil {
					t.Fatalf("send: %v", err)
				}
				if got := receive(t, conn); got != tc.want {
					t.Errorf("datagram = %q, want %q", got, tc.want)
				}
			})
		}
	}
}

func TestUnsetIsNoop(t *testing.T) {
	t.Parallel()
	for _, n := range []*Notifier{nil, {}, mustNew(t, "")} {
		if n.Enabled() {
			t.Errorf("%+v: Enabled() = true", n)
		}
		for _, f := range []func() error{n.Ready, n.Stopping, func() error { return n.Status("x") }} {
			if err := f(); err != nil {
				t.Errorf("%+v: no-op notifier returned %v", n, err)
			}
		}
	}
}

func TestNewRejectsUnsupportedAddresses(t *testing.T) {
	t.Parallel()
	for _, sock := range []string{"relative/path", "@", "vsock:2:1234", " /lead-space"} {
		_, err := New(sock)
		if !errors.Is(err, ErrUnsupportedSocket) {
			t.Errorf("New(%q) error = %v, want ErrUnsupportedSocket", sock, err)
		}
	}
}

func TestNotifyReportsMissingListener(t *testing.T) {
	t.Parallel()
	for _, sock := range []string{
		filepath.Join(t.TempDir(), "absent"),
		fmt.Sprintf("@pdr-sdnotify-absent-%d-%d", os.Getpid(), time.Now().UnixNano()),
	} {
		n := mustNew(t, sock)
		if err := n.Ready(); err == nil {
			t.Errorf("Ready() to %q with no listener succeeded, want an error", sock)
		}
	}
}

func mustNew(t *testing.T, sock string) *Notifier {
	t.Helper()
	n, err := New(sock)
	if err != nil {
		t.Fatalf("New(%q): %v", sock, err)
	}
	return n
}
