// Command dialer is a static test client for scratch containers: after
// -delay it connects to -dial, reports getsockname/getpeername as one JSON
// line, sends a line, prints the reply, and stays up for -linger so the
// test can still see its cgroup.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

type result struct {
	Local string `json:"local,omitempty"`
	Peer  string `json:"peer,omitempty"`
	Errno int    `json:"errno,omitempty"`
	Err   string `json:"err,omitempty"`
	Reply string `json:"reply,omitempty"`
}

func main() {
	dial := flag.String("dial", "169.254.169.254:80", "address to connect to")
	family := flag.Int("family", 4, "socket family: 4 or 6")
	delay := flag.Duration("delay", 0, "wait before connecting")
	linger := flag.Duration("linger", 0, "stay up this long after the exchange")
	flag.Parse()
	time.Sleep(*delay)
	_ = json.NewEncoder(os.Stdout).Encode(exchange(*dial, *family))
	time.Sleep(*linger)
}

func exchange(dial string, family int) (res result) {
	fail := func(step string, err error) result {
		res.Err = step + ": " + err.Error()
		var errno unix.Errno
		if errors.As(err, &errno) {
			res.Errno = int(errno)
		}
		return res
	}
	dst, err := netip.ParseAddrPort(dial)
	if err != nil {
		return fail("parse", err)
	}
	fam := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: dst.Addr().Unmap().As4(), Port: int(dst.Port())}
	if family == 6 {
		fam = unix.AF_INET6
		sa = &unix.SockaddrInet6{Addr: dst.Addr().As16(), Port: int(dst.Port())}
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail("socket", err)
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 3}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Connect(fd, sa); err != nil {
		return fail("connect", err)
	}
	if s, err := unix.Getsockname(fd); err == nil {
		res.Local = str(s)
	}
	if s, err := unix.Getpeername(fd); err == nil {
		res.Peer = str(s)
	}
	if _, err := unix.Write(fd, []byte("ping\n")); err != nil {
		return fail("write", err)
	}
	buf := make([]byte, 64)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return fail("read", err)
	}
	res.Reply = strings.TrimSpace(string(buf[:n]))
	return res
}

func str(sa unix.Sockaddr) string {
	switch s := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(s.Addr), uint16(s.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(s.Addr), uint16(s.Port)).String()
	}
	return ""
}
