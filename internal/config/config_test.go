package config

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	t.Parallel()
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		mod  func(*Config)
		want string // substring of the error; "" = valid
	}{
		{"ip mode without redirect", func(c *Config) { c.Redirect = "off"; c.Identity = "ip" }, ""},
		{"bad redirect", func(c *Config) { c.Redirect = "iptables" }, "--redirect"},
		{"bad identity", func(c *Config) { c.Identity = "mac" }, "--identity"},
		{"cgroup needs ebpf", func(c *Config) { c.Redirect = "off"; c.Identity = "cgroup" }, "needs --redirect=ebpf"},
		{"bad upstream", func(c *Config) { c.Upstream = "127.0.0.1:9911" }, "--upstream"},
		{"bad sts", func(c *Config) { c.STSEndpoint = "ftp://x" }, "--sts-endpoint"},
		{"long session explains chaining", func(c *Config) { c.SessionDuration = 2 * time.Hour }, "chained"},
		{"short session", func(c *Config) { c.SessionDuration = time.Minute }, "15m"},
		{"bad port", func(c *Config) { c.ProxyPort = 0 }, "--proxy-port"},
		{"bad listen", func(c *Config) { c.Listen = []string{"nohost"} }, "--listen"},
		{"bad host callers", func(c *Config) { c.HostCallers = "allow" }, "--host-callers"},
		{"bad imdsv1", func(c *Config) { c.IMDSv1 = "yes" }, "--imdsv1"},
		{"bad log format", func(c *Config) { c.LogFormat = "xml" }, "--log-format"},
		{"ns addr not link-local", func(c *Config) { c.NSAddr = "10.0.0.1" }, "--ns-addr"},
		{"ns addr is imds", func(c *Config) { c.NSAddr = "169.254.169.254" }, "AWS itself"},
		{"empty role label", func(c *Config) { c.RoleLabel = "" }, "--role-label"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			tt.mod(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

func TestParseFlagsAndEnv(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"PDR_UPSTREAM":      "http://127.0.0.1:1234",
		"PDR_ALLOWED_ROLES": "arn:aws:iam::1:role/a*, arn:aws:iam::1:role/b",
		"PDR_REGION":        "eu-west-1", // overridden by the flag below
	}
	c, _, err := Parse("pdr", []string{"--region", "us-west-2", "--redirect=off"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Upstream != "http://127.0.0.1:1234" {
		t.Errorf("upstream = %q, want env value", c.Upstream)
	}
	if c.Region != "us-west-2" {
		t.Errorf("region = %q, flag must win over env", c.Region)
	}
	if len(c.AllowedRoles) != 2 || c.AllowedRoles[1] != "arn:aws:iam::1:role/b" {
		t.Errorf("allowed roles = %q", c.AllowedRoles)
	}
	if c.IdentityMode() != "ip" || len(c.ListenAddrs()) != 1 || c.ListenAddrs()[0] != "127.0.0.1:9910" {
		t.Errorf("identity %q listen %q", c.IdentityMode(), c.ListenAddrs())
	}
}

func TestParseRejectsBadEnv(t *testing.T) {
	t.Parallel()
	_, _, err := Parse("pdr", nil, func(k string) string {
		if k == "PDR_SESSION_DURATION" {
			return "forever"
		}
		return ""
	}, io.Discard)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "PDR_SESSION_DURATION") {
		t.Fatalf("err = %v", err)
	}
}

func TestUsageListsEveryFlagWithEnv(t *testing.T) {
	t.Parallel()
	_, fs, err := Parse("pdr", nil, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	fs.Usage()
	for _, want := range []string{"--upstream  [PDR_UPSTREAM]", "--allowed-roles  [PDR_ALLOWED_ROLES]", "--version", "bpf status|detach"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("usage lacks %q", want)
		}
	}
}

func TestReferenceDocumentsEveryFlag(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, fs, err := Parse("pdr", nil, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fs.VisitAll(func(f *flag.Flag) {
		for _, want := range []string{"`--" + f.Name + "`", "`" + EnvName(f.Name) + "`"} {
			if !strings.Contains(string(doc), want) {
				t.Errorf("docs/configuration.md does not mention %s", want)
			}
		}
	})
}
