// Command fakeaws runs the loopback fakes of IAM Roles Anywhere
// (CreateSession) and STS (AssumeRole, GetCallerIdentity) for the demo and
// manual testing, writes a throw-away PKI, and prints the ARNs and the exact
// aws_signing_helper command line to point at them (or runs the helper
// itself with --start-helper). It refuses to listen anywhere but loopback.
//
//	go run ./cmd/fakeaws --pki-dir /tmp/pdr-pki --listen-ra 127.0.0.1:8443 \
//	  --listen-sts 127.0.0.1:8444 --trust 'pdr-base=>arn:aws:iam::123456789012:role/*'
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/fakeaws"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
	"go.uber.org/zap"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "fakeaws:", err)
		os.Exit(2)
	}
}

// trustFlag collects repeated --trust 'principal=>role' rules.
type trustFlag []string

func (t *trustFlag) String() string     { return strings.Join(*t, ",") }
func (t *trustFlag) Set(v string) error { *t = append(*t, v); return nil }

type config struct {
	ListenRA, ListenSTS string
	PKIDir              string
	Account, Region     string
	RoleName            string
	Trust               []string
	SessionDuration     time.Duration
	MaxDuration         time.Duration
	StartHelper         string
	HelperPort          int
	EnvFile             string
	Debug               bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	var trust trustFlag
	fs := flag.NewFlagSet("fakeaws", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.ListenRA, "listen-ra", "127.0.0.1:0", "loopback `host:port` of the Roles Anywhere fake (the helper's --endpoint)")
	fs.StringVar(&c.ListenSTS, "listen-sts", "127.0.0.1:0", "loopback `host:port` of the STS fake")
	fs.StringVar(&c.PKIDir, "pki-dir", "", "directory for the generated CA and client certificate/key (required)")
	fs.StringVar(&c.Account, "account", "123456789012", "12-digit AWS account id of the fake roles")
	fs.StringVar(&c.Region, "region", "us-east-1", "region of the trust anchor, profile and signing scope")
	fs.StringVar(&c.RoleName, "role-name", "pdr-base", "name of the helper's (base) role")
	fs.Var(&trust, "trust", "STS trust rule `principal=>role` (role names or ARNs, '*' globs); repeatable; default: base role may assume any role of the account")
	fs.DurationVar(&c.SessionDuration, "session-duration", time.Hour, "the helper's --session-duration (15m..12h)")
	fs.DurationVar(&c.MaxDuration, "max-duration", 12*time.Hour, "the Roles Anywhere profile's session cap (15m..12h)")
	fs.StringVar(&c.StartHelper, "start-helper", "", "`path` of aws_signing_helper to run as a child (empty: only print its command line)")
	fs.IntVar(&c.HelperPort, "helper-port", 9911, "port of the started helper on 127.0.0.1")
	fs.StringVar(&c.EnvFile, "env-file", "", "also write the printed KEY=VALUE lines to this `file` (for scripts)")
	fs.BoolVar(&c.Debug, "debug", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.Trust = trust
	return c, c.Validate()
}

var accountRE = regexp.MustCompile(`^[0-9]{12}$`)

// Validate reports the first mistake in one sentence.
func (c config) Validate() error {
	for _, l := range []struct{ flag, addr string }{{"--listen-ra", c.ListenRA}, {"--listen-sts", c.ListenSTS}} {
		host, port, err := net.SplitHostPort(l.addr)
		if err != nil {
			return fmt.Errorf("%s %q is not host:port: %w", l.flag, l.addr, err)
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("%s %q: the fakes listen on a loopback IP only (e.g. 127.0.0.1:%s)", l.flag, l.addr, port)
		}
	}
	switch {
	case c.PKIDir == "":
		return errors.New("--pki-dir is required")
	case !accountRE.MatchString(c.Account):
		return fmt.Errorf("--account %q is not a 12-digit account id", c.Account)
	case c.Region == "" || strings.ContainsAny(c.Region, " /:"):
		return fmt.Errorf("--region %q is not a region name", c.Region)
	case c.RoleName == "" || strings.ContainsAny(c.RoleName, " :"):
		return fmt.Errorf("--role-name %q is not a role name", c.RoleName)
	case c.SessionDuration < 15*time.Minute || c.SessionDuration > 12*time.Hour || c.SessionDuration%time.Second != 0:
		return fmt.Errorf("--session-duration %s is not whole seconds in 15m..12h", c.SessionDuration)
	case c.MaxDuration < 15*time.Minute || c.MaxDuration > 12*time.Hour:
		return fmt.Errorf("--max-duration %s is not in 15m..12h", c.MaxDuration)
	case c.HelperPort < 1 || c.HelperPort > 65535:
		return fmt.Errorf("--helper-port %d is not a port", c.HelperPort)
	}
	if c.StartHelper != "" {
		st, err := os.Stat(c.StartHelper)
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("--start-helper %q is not an executable file", c.StartHelper)
		}
	}
	_, err := c.trustRules()
	return err
}

// roleARN expands a bare role name to an ARN in the configured account.
func (c config) roleARN(s string) string {
	if strings.HasPrefix(s, "arn:") {
		return s
	}
	return fmt.Sprintf("arn:aws:iam::%s:role/%s", c.Account, s)
}

func (c config) trustRules() ([]fakeaws.TrustRule, error) {
	if len(c.Trust) == 0 {
		return nil, nil // NewUpstream's default
	}
	var rules []fakeaws.TrustRule
	for _, t := range c.Trust {
		p, r, ok := strings.Cut(t, "=>")
		p, r = strings.TrimSpace(p), strings.TrimSpace(r)
		if !ok || p == "" || r == "" {
			return nil, fmt.Errorf("--trust %q is not 'principal=>role'", t)
		}
		for _, s := range []string{p, r} {
			if strings.HasPrefix(s, "arn:") && !strings.HasPrefix(s, "arn:aws:iam::") {
				return nil, fmt.Errorf("--trust %q: %q is not an IAM role ARN", t, s)
			}
		}
		rules = append(rules, fakeaws.TrustRule{Principal: c.roleARN(p), Role: c.roleARN(r)})
	}
	return rules, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	zc := zap.NewDevelopmentConfig()
	if !c.Debug {
		zc.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	}
	log, err := zc.Build()
	if err != nil {
		return fmt.Errorf("build logger: %w", err)
	}
	defer func() { _ = log.Sync() }()

	trust, _ := c.trustRules() // validated
	u, err := testenv.NewUpstream(ctx, testenv.UpstreamConfig{
		Account:         c.Account,
		Region:          c.Region,
		RoleName:        c.RoleName,
		SessionDuration: c.SessionDuration,
		MaxDuration:     c.MaxDuration,
		Trust:           trust,
		PKIDir:          c.PKIDir,
		RAListen:        c.ListenRA,
		STSListen:       c.ListenSTS,
		HelperPath:      c.StartHelper,
		StartHelper:     c.StartHelper != "",
		HelperPort:      c.HelperPort,
	}, log)
	if err != nil {
		return err
	}
	defer u.Close()

	helper := c.StartHelper
	if helper == "" {
		helper = "aws_signing_helper"
	}
	env := map[string]string{
		"PDR_FAKE_RA_URL":      u.RAURL,
		"PDR_FAKE_STS_URL":     u.STSURL,
		"PDR_TRUST_ANCHOR_ARN": u.TrustAnchorARN,
		"PDR_PROFILE_ARN":      u.ProfileARN,
		"PDR_ROLE_ARN":         u.RoleARN,
		"PDR_CA_CERT":          u.PKI.CACertPath,
		"PDR_CERT":             u.PKI.CertPath,
		"PDR_KEY":              u.PKI.KeyPath,
		"PDR_HELPER_CMD":       u.CommandLine(helper, c.HelperPort),
		"PDR_HELPER_URL":       fmt.Sprintf("http://127.0.0.1:%d", c.HelperPort),
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, shellQuote(env[k]))
	}
	// The env file first: a reader of stdout may read it as soon as it sees the lines.
	if c.EnvFile != "" {
		if err := os.WriteFile(c.EnvFile, []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("write --env-file %s: %w", c.EnvFile, err)
		}
	}
	if _, err := io.WriteString(stdout, b.String()); err != nil {
		return fmt.Errorf("print settings: %w", err)
	}
	log.Info("fakes ready; Ctrl-C to stop", zap.String("rolesanywhere", u.RAURL), zap.String("sts", u.STSURL),
		zap.Bool("helper_started", c.StartHelper != ""))
	<-ctx.Done()
	log.Info("stopping")
	return nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
