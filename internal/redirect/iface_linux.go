//go:build linux

package redirect

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
)

// ensureInterface creates a dummy interface carrying the namespace
// targets' addresses, so callers in container namespaces can reach the
// proxy through their default route without the address existing on any
// physical link. It uses ip(8): the change is small, idempotent and easy
// for an operator to inspect or reproduce.
func ensureInterface(name string, v4, v6 netip.Addr) error {
	if _, err := net.InterfaceByName(name); err != nil {
		// Kernels built without CONFIG_DUMMY lack the dummy type; a bridge
		// with no ports holds an address just as well (local delivery
		// needs the interface up, not a carrier) and forwards nothing.
		if err := ip("link", "add", name, "type", "dummy"); err != nil {
			if err2 := ip("link", "add", name, "type", "bridge"); err2 != nil {
				return fmt.Errorf("%w (and as a bridge: %w)", err, err2)
			}
		}
	}
	if v4.IsValid() {
		if err := ip("addr", "replace", v4.String()+"/32", "dev", name); err != nil {
			return err
		}
	}
	if v6.IsValid() {
		if err := ip("-6", "addr", "replace", v6.String()+"/128", "dev", name, "nodad"); err != nil {
			return err
		}
	}
	return ip("link", "set", name, "up")
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("redirect: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
