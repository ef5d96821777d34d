// Package roles decides which IAM role a container gets from its labels,
// and which roles the operator allows at all.
//
// A role label holds either a role name (with an optional IAM path), which
// resolves in the base account and partition, or a full role ARN. The
// default policy allows any role in the base account; Allowed globs widen
// or narrow that.
package roles

import (
	"errors"
	"fmt"
	"strings"
)

// Label defaults.
const (
	DefaultRoleLabel       = "per-docker-roles.role"
	DefaultExternalIDLabel = "per-docker-roles.external-id"
)

var (
	// ErrNoLabel means the container carries no role label.
	ErrNoLabel = errors.New("no role label")
	// ErrMalformed means a label value is not a valid role name, role ARN
	// or external ID.
	ErrMalformed = errors.New("malformed label")
	// ErrNotAllowed means the role is valid but outside the policy.
	ErrNotAllowed = errors.New("role not allowed by policy")
	// ErrBase means the base account or partition is unknown or invalid,
	// so no role can be resolved yet.
	ErrBase = errors.New("base account unknown")
)

// Config is the role policy. Zero values take the defaults.
type Config struct {
	RoleLabel       string   // default DefaultRoleLabel
	ExternalIDLabel string   // default DefaultExternalIDLabel
	Allowed         []string // role ARN globs; * matches any run of characters, "/" included. Empty: any role in the base account
}

// Base is the account and partition of the host's base credentials.
type Base struct {
	Account   string // 12 digits
	Partition string // aws, aws-cn, aws-us-gov, ...
}

// Role is the outcome of Select.
type Role struct {
	ARN        string // arn:<partition>:iam::<account>:role/<path><name>
	Name       string // last element of the ARN's resource path
	ExternalID string // empty when not labelled
}

// Policy selects roles. It is immutable and safe for concurrent use.
type Policy struct {
	roleLabel, externalIDLabel string
	allowed                    []string
}

// Limits from the IAM and STS API references.
const (
	maxRoleNameLen   = 64
	maxRolePathLen   = 512
	maxLabelLen      = 2048 // an ARN is at most 2048 characters
	minExternalIDLen = 2
	maxExternalIDLen = 1224
)

// Character classes from the IAM and STS API references. Hand-written
// rather than regexps: Select runs on every credential request.
func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

// validRoleName: [\w+=,.@-]{1,64}.
func validRoleName(s string) bool {
	return len(s) >= 1 && len(s) <= maxRoleNameLen && allBytes(s, func(c byte) bool {
		return isWordByte(c) || strings.IndexByte("+=,.@-", c) >= 0
	})
}

// validAccount: 12 digits.
func validAccount(s string) bool {
	return len(s) == 12 && allBytes(s, func(c byte) bool { return c >= '0' && c <= '9' })
}

// validExternalID: [\w+=,.@:/-]{2,1224}.
func validExternalID(s string) bool {
	return len(s) >= minExternalIDLen && len(s) <= maxExternalIDLen && allBytes(s, func(c byte) bool {
		return isWordByte(c) || strings.IndexByte("+=,.@:/-", c) >= 0
	})
}

// validPartition: aws, or aws followed by -lowercase groups (aws-cn,
// aws-us-gov, aws-iso-b, ...). Matched by shape, not by list, so a new
// partition needs no release; cross-partition roles are refused anyway.
func validPartition(s string) bool {
	rest, ok := strings.CutPrefix(s, "aws")
	if !ok {
		return false
	}
	if rest == "" {
		return true
	}
	if rest, ok = strings.CutPrefix(rest, "-"); !ok {
		return false
	}
	for _, group := range strings.Split(rest, "-") {
		if group == "" || !allBytes(group, func(c byte) bool { return c >= 'a' && c <= 'z' }) {
			return false
		}
	}
	return true
}

// New validates cfg and returns its Policy.
func New(cfg Config) (*Policy, error) {
	p := &Policy{roleLabel: cfg.RoleLabel, externalIDLabel: cfg.ExternalIDLabel}
	if p.roleLabel == "" {
		p.roleLabel = DefaultRoleLabel
	}
	if p.externalIDLabel == "" {
		p.externalIDLabel = DefaultExternalIDLabel
	}
	if p.roleLabel == p.externalIDLabel {
		return nil, fmt.Errorf("role policy: role label and external id label are both %q", p.roleLabel)
	}
	for _, g := range cfg.Allowed {
		if err := validateGlob(g); err != nil {
			return nil, fmt.Errorf("role policy: allowed role glob %q: %w", g, err)
		}
		p.allowed = append(p.allowed, g)
	}
	return p, nil
}

func validateGlob(g string) error {
	if !strings.HasPrefix(g, "arn:") {
		return errors.New(`must start with "arn:"`)
	}
	if len(g) > maxLabelLen {
		return fmt.Errorf("longer than %d characters", maxLabelLen)
	}
	for i := 0; i < len(g); i++ {
		if g[i] < 0x21 || g[i] > 0x7e {
			return fmt.Errorf("character %q at %d: only printable ASCII without spaces", g[i], i)
		}
	}
	if strings.Count(g, ":") < 5 {
		return errors.New("want arn:<partition>:iam::<account>:role/<name> (with * wildcards)")
	}
	return nil
}

// Select returns the role the labels ask for, checked against the policy.
func (p *Policy) Select(labels map[string]string, base Base) (Role, error) {
	value, ok := labels[p.roleLabel]
	if !ok {
		return Role{}, ErrNoLabel
	}
	value = strings.TrimSpace(value)
	if !validPartition(base.Partition) || !validAccount(base.Account) {
		return Role{}, fmt.Errorf("select role %q: base account %q partition %q: %w", value, base.Account, base.Partition, ErrBase)
	}
	r, err := parseRole(value, base)
	if err != nil {
		return Role{}, fmt.Errorf("label %s=%q: %w", p.roleLabel, value, err)
	}
	if ext, ok := labels[p.externalIDLabel]; ok {
		ext = strings.TrimSpace(ext)
		if !validExternalID(ext) {
			return Role{}, fmt.Errorf("label %s: want %d..%d characters of [A-Za-z0-9_+=,.@:/-]: %w",
				p.externalIDLabel, minExternalIDLen, maxExternalIDLen, ErrMalformed)
		}
		r.ExternalID = ext
	}
	if err := p.allow(r.ARN, base); err != nil {
		return Role{}, fmt.Errorf("role %s: %w", r.ARN, err)
	}
	return r, nil
}

func (p *Policy) allow(arn string, base Base) error {
	partition, account, _, _ := splitRoleARN(arn) // already validated
	if partition != base.Partition {
		return fmt.Errorf("partition %s differs from the base partition %s: %w", partition, base.Partition, ErrNotAllowed)
	}
	if len(p.allowed) == 0 {
		if account != base.Account {
			return fmt.Errorf("account %s is not the base account %s and no allowed-roles glob widens the policy: %w", account, base.Account, ErrNotAllowed)
		}
		return nil
	}
	for _, g := range p.allowed {
		if globMatch(g, arn) {
			return nil
		}
	}
	return fmt.Errorf("matches no allowed-roles glob: %w", ErrNotAllowed)
}

// parseRole turns a label value into a Role: a full role ARN, or a role
// name with an optional path resolved in the base account.
func parseRole(value string, base Base) (Role, error) {
	if value == "" {
		return Role{}, fmt.Errorf("empty: %w", ErrMalformed)
	}
	if len(value) > maxLabelLen {
		return Role{}, fmt.Errorf("longer than %d characters: %w", maxLabelLen, ErrMalformed)
	}
	if strings.HasPrefix(value, "arn:") {
		partition, account, path, name := splitRoleARN(value)
		if !validPartition(partition) || !validAccount(account) || path == "" {
			return Role{}, fmt.Errorf("want arn:<partition>:iam::<12-digit account>:role/[path/]<name>: %w", ErrMalformed)
		}
		if err := checkPathName(path, name); err != nil {
			return Role{}, err
		}
		return Role{ARN: value, Name: name}, nil
	}
	// A name, possibly with a path: "my-role", "team/app/my-role" or
	// "/team/app/my-role".
	rest := strings.TrimPrefix(value, "/")
	path, name := "/", rest
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		path, name = "/"+rest[:i+1], rest[i+1:]
	}
	if err := checkPathName(path, name); err != nil {
		return Role{}, err
	}
	return Role{ARN: "arn:" + base.Partition + ":iam::" + base.Account + ":role" + path + name, Name: name}, nil
}

// splitRoleARN splits arn:<partition>:iam::<account>:role<path><name>. The
// path keeps its leading and trailing "/"; all parts are empty when arn
// does not have that shape.
func splitRoleARN(arn string) (partition, account, path, name string) {
	f := strings.SplitN(arn, ":", 6)
	if len(f) != 6 || f[0] != "arn" || f[2] != "iam" || f[3] != "" || !strings.HasPrefix(f[5], "role/") {
		return "", "", "", ""
	}
	res := strings.TrimPrefix(f[5], "role")
	i := strings.LastIndexByte(res, '/')
	return f[1], f[4], res[:i+1], res[i+1:]
}

func checkPathName(path, name string) error {
	if !validRoleName(name) {
		return fmt.Errorf("role name %q: want 1..%d characters of [A-Za-z0-9_+=,.@-]: %w", name, maxRoleNameLen, ErrMalformed)
	}
	if len(path) > maxRolePathLen {
		return fmt.Errorf("role path longer than %d characters: %w", maxRolePathLen, ErrMalformed)
	}
	for i := 0; i < len(path); i++ {
		if path[i] < 0x21 || path[i] > 0x7e {
			return fmt.Errorf("role path %q: character %q is not printable ASCII: %w", path, path[i], ErrMalformed)
		}
	}
	return nil
}

// globMatch reports whether s matches pattern, where '*' matches any run
// of bytes ('/' included) and every other byte matches itself. Linear-ish:
// it backtracks only to the most recent star.
func globMatch(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// ParseBaseARN extracts the base account, partition and role name from
// the ARN of the base credentials: a role ARN
// (arn:aws:iam::123456789012:role/path/name) or an assumed-role session
// ARN (arn:aws:sts::123456789012:assumed-role/name/session), which is what
// STS GetCallerIdentity reports for Roles Anywhere and EC2 sessions.
func ParseBaseARN(arn string) (Base, string, error) {
	f := strings.SplitN(arn, ":", 6)
	if len(f) != 6 || f[0] != "arn" || !validPartition(f[1]) || f[3] != "" || !validAccount(f[4]) {
		return Base{}, "", fmt.Errorf("parse base arn %q: %w", arn, ErrBase)
	}
	base := Base{Partition: f[1], Account: f[4]}
	var name string
	switch {
	case f[2] == "iam" && strings.HasPrefix(f[5], "role/"):
		name = f[5][strings.LastIndexByte(f[5], '/')+1:]
	case f[2] == "sts" && strings.HasPrefix(f[5], "assumed-role/"):
		name, _, _ = strings.Cut(strings.TrimPrefix(f[5], "assumed-role/"), "/")
	}
	if !validRoleName(name) {
		return Base{}, "", fmt.Errorf("parse base arn %q: not a role or assumed-role arn: %w", arn, ErrBase)
	}
	return base, name, nil
}

// SessionName returns the RoleSessionName for a container: its name,
// else its short id, sanitized to STS's [\w+=,.@-]{2,64}. Never empty, so
// CloudTrail always attributes a session to a container.
func SessionName(containerName, containerID string) string {
	if s := sanitize(strings.TrimPrefix(containerName, "/")); len(s) >= 2 {
		return s
	}
	id := containerID
	if len(id) > 12 {
		id = id[:12]
	}
	if s := sanitize(id); len(s) >= 2 {
		return s
	}
	return "per-docker-roles"
}

func sanitize(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 64; i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			strings.IndexByte("_+=,.@-", c) >= 0:
			b.WriteByte(c)
		default:
			b.WriteByte('-')
		}
	}
	return strings.Trim(b.String(), "-")
}
