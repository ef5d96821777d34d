//go:build !linux

package redirect

import (
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Redirector is unavailable off Linux.
type Redirector struct{}

// New returns ErrUnsupported off Linux.
func New(Config, *zap.Logger, prometheus.Registerer) (*Redirector, error) {
	return nil, ErrUnsupported
}

// Lookup returns ErrNoRecord.
func (*Redirector) Lookup(netip.AddrPort) (Record, error) { return Record{}, ErrNoRecord }

// Listen returns nothing.
func (*Redirector) Listen() []netip.AddrPort { return nil }

// Status returns ErrUnsupported.
func (*Redirector) Status() (Status, error) { return Status{}, ErrUnsupported }

// Close does nothing.
func (*Redirector) Close() error { return nil }

// Detach returns ErrUnsupported.
func Detach(string) error { return ErrUnsupported }

// ReadStatus returns ErrUnsupported.
func ReadStatus(string) (Status, error) { return Status{}, ErrUnsupported }
