// Package config holds the daemon's configuration: one plain struct, its
// defaults in one place, the command-line and environment bindings, and
// Validate.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
)

// Config is everything the daemon can be told.
type Config struct {
	ProxyPort   int      // port the IMDS proxy serves on (redirect targets)
	Listen      []string // extra listen addresses (required reachability with --redirect=off)
	AdminListen string   // /healthz, /readyz, /metrics

	Redirect   string // "ebpf" or "off"
	Identity   string // "cgroup" or "ip"; "" = cgroup with ebpf, ip without
	NSAddr     string // address for callers outside the host network namespace
	CgroupPath string // eBPF attach point; "" = cgroup2 root
	BPFPinDir  string

	Upstream        string
	Region          string
	STSEndpoint     string
	SessionDuration time.Duration

	RoleLabel       string
	ExternalIDLabel string
	AllowedRoles    []string
	HostCallers     string // "deny" or "base"
	IMDSv1          string // "deny" or "allow"

	DockerHost string
	LogFormat  string // "json" or "console"
	LogLevel   string
}

// Default returns the configuration used when nothing is set.
func Default() Config {
	return Config{
		ProxyPort:       9910,
		AdminListen:     "127.0.0.1:9912",
		Redirect:        "ebpf",
		NSAddr:          "169.254.170.254",
		BPFPinDir:       "/sys/fs/bpf/per-docker-roles",
		Upstream:        "http://127.0.0.1:9911",
		Region:          "us-east-1",
		SessionDuration: time.Hour,
		RoleLabel:       "per-docker-roles.role",
		ExternalIDLabel: "per-docker-roles.external-id",
		HostCallers:     "deny",
		IMDSv1:          "deny",
		LogFormat:       "json",
		LogLevel:        "info",
	}
}

// ErrInvalid wraps every validation failure.
var ErrInvalid = errors.New("invalid configuration")

// MaxChainedSession is the longest session STS grants to a chained
// AssumeRole (Roles Anywhere and EC2 role sessions are role sessions).
const MaxChainedSession = time.Hour

// IdentityMode returns the identity strategy in effect.
func (c Config) IdentityMode() string {
	if c.Identity != "" {
		return c.Identity
	}
	if c.Redirect == "ebpf" {
		return "cgroup"
	}
	return "ip"
}

// ListenAddrs returns the proxy listen addresses given on the command line;
// with --redirect=off and none given, the loopback proxy port.
func (c Config) ListenAddrs() []string {
	if len(c.Listen) == 0 && c.Redirect == "off" {
		return []string{net.JoinHostPort("127.0.0.1", fmt.Sprint(c.ProxyPort))}
	}
	return c.Listen
}

// UpstreamURL parses Upstream (valid after Validate).
func (c Config) UpstreamURL() *url.URL {
	u, _ := url.Parse(c.Upstream)
	return u
}

// Validate reports the first problem with c, as one clear sentence.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if c.ProxyPort < 1 || c.ProxyPort > 65535 {
		return bad("--proxy-port %d: must be 1..65535", c.ProxyPort)
	}
	for _, l := range c.Listen {
		if _, _, err := net.SplitHostPort(l); err != nil {
			return bad("--listen %q: want host:port: %v", l, err)
		}
	}
	if _, _, err := net.SplitHostPort(c.AdminListen); err != nil && c.AdminListen != "" {
		return bad("--admin-listen %q: want host:port (or empty to disable): %v", c.AdminListen, err)
	}
	if err := oneOf("redirect", c.Redirect, "ebpf", "off"); err != nil {
		return err
	}
	if c.Identity != "" { // "" picks the default for --redirect
		if err := oneOf("identity", c.Identity, "cgroup", "ip"); err != nil {
			return err
		}
	}
	if c.IdentityMode() == "cgroup" && c.Redirect != "ebpf" {
		return bad("--identity=cgroup needs --redirect=ebpf: only the redirect records which cgroup connected")
	}
	if a, err := netip.ParseAddr(c.NSAddr); err != nil || !a.Is4() || !a.IsLinkLocalUnicast() {
		return bad("--ns-addr %q: want an IPv4 link-local address (169.254.x.y) that is not routed beyond the host", c.NSAddr)
	} else if a == netip.MustParseAddr("169.254.169.254") || a == netip.MustParseAddr("169.254.169.253") {
		return bad("--ns-addr %s is an address AWS itself serves", c.NSAddr)
	}
	if c.BPFPinDir == "" && c.Redirect == "ebpf" {
		return bad("--bpf-pin-dir must not be empty with --redirect=ebpf")
	}
	u, err := url.Parse(c.Upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return bad("--upstream %q: want an http(s) URL such as http://127.0.0.1:9911", c.Upstream)
	}
	if c.STSEndpoint != "" {
		u, err := url.Parse(c.STSEndpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("--sts-endpoint %q: want an http(s) URL", c.STSEndpoint)
		}
	}
	if c.Region == "" {
		return bad("--region must not be empty")
	}
	if c.SessionDuration < 15*time.Minute {
		return bad("--session-duration %s: STS needs at least 15m", c.SessionDuration)
	}
	if c.SessionDuration > MaxChainedSession {
		return bad("--session-duration %s: the base credentials are themselves a role session (Roles Anywhere or EC2), so STS caps chained AssumeRole sessions at 1h; use 1h or less", c.SessionDuration)
	}
	if c.RoleLabel == "" {
		return bad("--role-label must not be empty")
	}
	if err := oneOf("host-callers", c.HostCallers, "deny", "base"); err != nil {
		return err
	}
	if err := oneOf("imdsv1", c.IMDSv1, "deny", "allow"); err != nil {
		return err
	}
	if err := oneOf("log-format", c.LogFormat, "json", "console"); err != nil {
		return err
	}
	if err := oneOf("log-level", c.LogLevel, "debug", "info", "warn", "error"); err != nil {
		return err
	}
	return nil
}

// oneOf checks that flag name has one of the values want.
func oneOf(name, v string, want ...string) error {
	if slices.Contains(want, v) {
		return nil
	}
	list := strings.Join(want[:len(want)-1], ", ") + " or " + want[len(want)-1]
	return fmt.Errorf("%w: --%s %q: want %s", ErrInvalid, name, v, list)
}

// EnvName is the environment variable that sets flag name.
func EnvName(flagName string) string {
	return "PDR_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// listFlag is a comma-separated list.
type listFlag struct{ v *[]string }

func (l listFlag) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l listFlag) Set(s string) error {
	*l.v = nil
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.v = append(*l.v, p)
		}
	}
	return nil
}

// Bind registers every field of c on fs, with defaults taken from c.
func (c *Config) Bind(fs *flag.FlagSet) {
	fs.IntVar(&c.ProxyPort, "proxy-port", c.ProxyPort, "port the IMDS proxy serves on; the eBPF redirect sends metadata connections here")
	fs.Var(listFlag{&c.Listen}, "listen", "extra proxy listen addresses, comma-separated host:port (with --redirect=off containers must reach one of them; default there 127.0.0.1:<proxy-port>)")
	fs.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "address for /healthz, /readyz and /metrics (empty disables)")
	fs.StringVar(&c.Redirect, "redirect", c.Redirect, "how containers reach the proxy: ebpf (transparent redirect of 169.254.169.254) or off")
	fs.StringVar(&c.Identity, "identity", c.Identity, "how callers are identified: cgroup (needs --redirect=ebpf) or ip (default: cgroup with ebpf, ip without)")
	fs.StringVar(&c.NSAddr, "ns-addr", c.NSAddr, "link-local address the redirect sends callers outside the host network namespace to")
	fs.StringVar(&c.CgroupPath, "cgroup-path", c.CgroupPath, "cgroup2 directory to attach the eBPF programs to (default: the cgroup2 root)")
	fs.StringVar(&c.BPFPinDir, "bpf-pin-dir", c.BPFPinDir, "bpffs directory where programs, links and maps are pinned")
	fs.StringVar(&c.Upstream, "upstream", c.Upstream, "IMDSv2 endpoint that serves the host's base credentials (aws_signing_helper serve, or http://169.254.169.254 on EC2)")
	fs.StringVar(&c.Region, "region", c.Region, "AWS region for STS")
	fs.StringVar(&c.STSEndpoint, "sts-endpoint", c.STSEndpoint, "STS endpoint URL override (VPC endpoints, tests)")
	fs.DurationVar(&c.SessionDuration, "session-duration", c.SessionDuration, "AssumeRole session length (15m..1h: chained role sessions cap at 1h)")
	fs.StringVar(&c.RoleLabel, "role-label", c.RoleLabel, "container label naming the role (a role name in the base account, or a full role ARN)")
	fs.StringVar(&c.ExternalIDLabel, "external-id-label", c.ExternalIDLabel, "container label carrying the STS external ID")
	fs.Var(listFlag{&c.AllowedRoles}, "allowed-roles", "comma-separated role ARN globs containers may assume (default: any role in the base account)")
	fs.StringVar(&c.HostCallers, "host-callers", c.HostCallers, "what host processes get: deny (no credentials) or base (the upstream role unchanged)")
	fs.StringVar(&c.IMDSv1, "imdsv1", c.IMDSv1, "tokenless (IMDSv1) requests: deny or allow")
	fs.StringVar(&c.DockerHost, "docker-host", c.DockerHost, "Docker Engine API endpoint (default: $DOCKER_HOST or unix:///var/run/docker.sock)")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log encoding: json or console")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
}

// ApplyEnv sets every flag not given on the command line from its
// environment variable (PDR_<FLAG>), so systemd environment files work.
func ApplyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		v := getenv(EnvName(f.Name))
		if v == "" {
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s=%q: %v", ErrInvalid, EnvName(f.Name), v, err))
		}
	})
	return errors.Join(errs...)
}

// Parse builds a Config from args and the environment; usage and flag
// errors are written to out.
func Parse(name string, args []string, getenv func(string) string, out io.Writer) (Config, *flag.FlagSet, error) {
	c := Default()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	c.Bind(fs)
	fs.Usage = func() { Usage(fs) }
	if err := fs.Parse(args); err != nil {
		return c, fs, err
	}
	if err := ApplyEnv(fs, getenv); err != nil {
		return c, fs, err
	}
	return c, fs, nil
}

// Usage prints every flag with its environment form.
func Usage(fs *flag.FlagSet) {
	out := fs.Output()
	fmt.Fprintf(out, "Usage: %s [flags]\n       %s bpf status|detach [--bpf-pin-dir DIR]\n       %s doctor\n       %s --version\n\nFlags (each can also be set with the environment variable shown):\n", fs.Name(), fs.Name(), fs.Name(), fs.Name())
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	for _, n := range names {
		f := fs.Lookup(n)
		def := ""
		if f.DefValue != "" {
			def = fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(out, "  --%s  [%s]%s\n      %s\n", n, EnvName(n), def, f.Usage)
	}
	fmt.Fprintf(out, "  --version\n      print version, commit and build date, then exit\n")
}
