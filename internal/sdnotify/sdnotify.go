// Package sdnotify tells systemd about the daemon's state through the
// sd_notify datagram protocol (READY=1, STOPPING=1, STATUS=...), so a unit of
// Type=notify is reported active only once the daemon can actually serve.
//
// It speaks the protocol directly (one datagram per call on an AF_UNIX
// SOCK_DGRAM socket named by $NOTIFY_SOCKET) instead of linking libsystemd,
// because the release binaries are static (CGO_ENABLED=0).
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// EnvSocket is the environment variable systemd sets for Type=notify units.
const EnvSocket = "NOTIFY_SOCKET"

// ErrUnsupportedSocket means $NOTIFY_SOCKET names an address family this
// client does not speak (only filesystem paths and abstract '@' names are
// supported; systemd ≥254 may also hand out vsock addresses).
var ErrUnsupportedSocket = errors.New("unsupported notify socket address")

// Notifier sends state changes to the service manager. The zero value and a
// Notifier built from an empty socket are no-ops, so callers need not check
// whether they run under systemd.
type Notifier struct {
	addr *net.UnixAddr
}

// New returns a Notifier for the socket address systemd passed in
// $NOTIFY_SOCKET (the caller reads the environment, keeping this package free
// of process globals). An empty address yields a no-op Notifier. An address
// starting with '@' names a Linux abstract socket.
func New(socket string) (*Notifier, error) {
	switch {
	case socket == "":
		return &Notifier{}, nil
	case strings.HasPrefix(socket, "/"):
	case strings.HasPrefix(socket, "@") && len(socket) > 1:
		// Go's syscall layer turns a leading '@' into the NUL byte that
		// marks an abstract address, which is exactly systemd's notation.
	default:
		return nil, fmt.Errorf("notify socket %q: %w", socket, ErrUnsupportedSocket)
	}
	return &Notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}, nil
}

// Enabled reports whether notifications go anywhere.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// Notify sends one raw state string, e.g. "READY=1\nSTATUS=serving". It is a
// no-op when the Notifier is not enabled.
func (n *Notifier) Notify(state string) error {
	if !n.Enabled() {
		return nil
	}
	// A fresh unbound socket per message: notifications are rare (start,
	// stop, a few status lines) and this leaves no descriptor to own.
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify dial %s: %w", n.addr.Name, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify send to %s: %w", n.addr.Name, err)
	}
	return nil
}

// Ready tells systemd that start-up finished; for the daemon this means the
// container index synced and the redirect is attached.
func (n *Notifier) Ready() error { return n.Notify("READY=1") }

// Stopping tells systemd that an orderly shutdown began.
func (n *Notifier) Stopping() error { return n.Notify("STOPPING=1") }

// Status sets the one-line free-form status shown by `systemctl status`.
// Newlines would start a new variable assignment in the protocol, so they are
// replaced by spaces.
func (n *Notifier) Status(msg string) error {
	return n.Notify("STATUS=" + strings.NewReplacer("\r", " ", "\n", " ").Replace(msg))
}

// ReadyStatus sends READY=1 and a status line in one datagram, so systemd
// never shows the unit active with a stale status.
func (n *Notifier) ReadyStatus(msg string) error {
	return n.Notify("READY=1\nSTATUS=" + strings.NewReplacer("\r", " ", "\n", " ").Replace(msg))
}
