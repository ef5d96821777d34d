package roles

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

var base = Base{Account: "123456789012", Partition: "aws"}

func TestSelect(t *testing.T) {
	t.Parallel()
	const L, E = DefaultRoleLabel, DefaultExternalIDLabel
	long := strings.Repeat("a", 64)
	tests := []struct {
		name    string
		allowed []string
		base    Base // zero: the package's base
		noBase  bool // use the zero Base
		labels  map[string]string
		want    Role
		wantErr error
	}{
		{name: "no labels", labels: nil, wantErr: ErrNoLabel},
		{name: "other labels only", labels: map[string]string{"x": "y"}, wantErr: ErrNoLabel},
		{name: "bare name", labels: map[string]string{L: "my-role"},
			want: Role{ARN: "arn:aws:iam::123456789012:role/my-role", Name: "my-role"}},
		{name: "name with surrounding space", labels: map[string]string{L: " my-role\n"},
			want: Role{ARN: "arn:aws:iam::123456789012:role/my-role", Name: "my-role"}},
		{name: "name with path", labels: map[string]string{L: "team/app/my-role"},
			want: Role{ARN: "arn:aws:iam::123456789012:role/team/app/my-role", Name: "my-role"}},
		{name: "name with leading slash path", labels: map[string]string{L: "/team/my-role"},
			want: Role{ARN: "arn:aws:iam::123456789012:role/team/my-role", Name: "my-role"}},
		{name: "all name chars", labels: map[string]string{L: "a_Z0+=,.@-"},
			want: Role{ARN: "arn:aws:iam::123456789012:role/a_Z0+=,.@-", Name: "a_Z0+=,.@-"}},
		{name: "64 char name", labels: map[string]string{L: long},
			want: Role{ARN: "arn:aws:iam::123456789012:role/" + long, Name: long}},
		{name: "china partition", base: Base{Account: "123456789012", Partition: "aws-cn"}, labels: map[string]string{L: "r"},
			want: Role{ARN: "arn:aws-cn:iam::123456789012:role/r", Name: "r"}},
		{name: "full arn same account", labels: map[string]string{L: "arn:aws:iam::123456789012:role/p/q/r"},
			want: Role{ARN: "arn:aws:iam::123456789012:role/p/q/r", Name: "r"}},
		{name: "external id", labels: map[string]string{L: "r", E: "ext-ID_1:/@"},
			want: Role{ARN: "arn:aws:iam::123456789012:role/r", Name: "r", ExternalID: "ext-ID_1:/@"}},

		{name: "empty", labels: map[string]string{L: ""}, wantErr: ErrMalformed},
		{name: "blank", labels: map[string]string{L: "  "}, wantErr: ErrMalformed},
		{name: "65 char name", labels: map[string]string{L: long + "a"}, wantErr: ErrMalformed},
		{name: "space in name", labels: map[string]string{L: "my role"}, wantErr: ErrMalformed},
		{name: "bad char", labels: map[string]string{L: "role*"}, wantErr: ErrMalformed},
		{name: "trailing slash", labels: map[string]string{L: "team/"}, wantErr: ErrMalformed},
		{name: "unicode", labels: map[string]string{L: "rôle"}, wantErr: ErrMalformed},
		{name: "path with space", labels: map[string]string{L: "a b/r"}, wantErr: ErrMalformed},
		{name: "path too long", labels: map[string]string{L: strings.Repeat("p/", 300) + "r"}, wantErr: ErrMalformed},
		{name: "arn not iam", labels: map[string]string{L: "arn:aws:sts::123456789012:role/r"}, wantErr: ErrMalformed},
		{name: "arn user", labels: map[string]string{L: "arn:aws:iam::123456789012:user/r"}, wantErr: ErrMalformed},
		{name: "arn short account", labels: map[string]string{L: "arn:aws:iam::12345:role/r"}, wantErr: ErrMalformed},
		{name: "arn region set", labels: map[string]string{L: "arn:aws:iam:us-east-1:123456789012:role/r"}, wantErr: ErrMalformed},
		{name: "arn bad partition", labels: map[string]string{L: "arn:AWS:iam::123456789012:role/r"}, wantErr: ErrMalformed},
		{name: "arn no name", labels: map[string]string{L: "arn:aws:iam::123456789012:role/"}, wantErr: ErrMalformed},
		{name: "arn truncated", labels: map[string]string{L: "arn:aws:iam::123456789012"}, wantErr: ErrMalformed},
		{name: "external id too short", labels: map[string]string{L: "r", E: "x"}, wantErr: ErrMalformed},
		{name: "external id too long", labels: map[string]string{L: "r", E: strings.Repeat("x", 1225)}, wantErr: ErrMalformed},
		{name: "external id bad char", labels: map[string]string{L: "r", E: "a b"}, wantErr: ErrMalformed},
		{name: "external id 1224", labels: map[string]string{L: "r", E: strings.Repeat("x", 1224)},
			want: Role{ARN: "arn:aws:iam::123456789012:role/r", Name: "r", ExternalID: strings.Repeat("x", 1224)}},

		{name: "default policy: other account", labels: map[string]string{L: "arn:aws:iam::999999999999:role/r"}, wantErr: ErrNotAllowed},
		{name: "other partition", labels: map[string]string{L: "arn:aws-cn:iam::123456789012:role/r"}, wantErr: ErrNotAllowed},
		{name: "glob allows other account", allowed: []string{"arn:aws:iam::999999999999:role/app-*"},
			labels: map[string]string{L: "arn:aws:iam::999999999999:role/app-x"},
			want:   Role{ARN: "arn:aws:iam::999999999999:role/app-x", Name: "app-x"}},
		{name: "glob star crosses slash", allowed: []string{"arn:aws:iam::123456789012:role/team/*"},
			labels: map[string]string{L: "team/a/b/r"},
			want:   Role{ARN: "arn:aws:iam::123456789012:role/team/a/b/r", Name: "r"}},
		{name: "glob narrows base account", allowed: []string{"arn:aws:iam::123456789012:role/app-*"},
			labels: map[string]string{L: "admin"}, wantErr: ErrNotAllowed},
		{name: "glob is anchored", allowed: []string{"arn:aws:iam::123456789012:role/app"},
			labels: map[string]string{L: "app2"}, wantErr: ErrNotAllowed},
		{name: "second glob matches", allowed: []string{"arn:aws:iam::1*:role/x", "arn:aws:iam::*:role/*-ro"},
			labels: map[string]string{L: "arn:aws:iam::555555555555:role/db-ro"},
			want:   Role{ARN: "arn:aws:iam::555555555555:role/db-ro", Name: "db-ro"}},

		{name: "base unknown", noBase: true, labels: map[string]string{L: "r"}, wantErr: ErrBase},
		{name: "no label beats bad base", noBase: true, labels: map[string]string{}, wantErr: ErrNoLabel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := New(Config{Allowed: tt.allowed})
			if err != nil {
				t.Fatal(err)
			}
			b := tt.base
			if b == (Base{}) && !tt.noBase {
				b = base
			}
			got, err := p.Select(tt.labels, b)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Select err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("Select = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestCustomLabels(t *testing.T) {
	t.Parallel()
	p, err := New(Config{RoleLabel: "r", ExternalIDLabel: "e"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Select(map[string]string{"r": "x", "e": "xx", DefaultRoleLabel: "y"}, base)
	if err != nil || got.Name != "x" || got.ExternalID != "xx" {
		t.Fatalf("Select = %+v, %v", got, err)
	}
	if _, err := p.Select(map[string]string{DefaultRoleLabel: "y"}, base); !errors.Is(err, ErrNoLabel) {
		t.Fatalf("default label honoured under a custom one: %v", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{Allowed: []string{""}},
		{Allowed: []string{"*"}},
		{Allowed: []string{"role/app-*"}},
		{Allowed: []string{"arn:aws:iam::123456789012:role/a b"}},
		{Allowed: []string{"arn:aws:iam:role/x"}},
		{Allowed: []string{"arn:" + strings.Repeat("x", 2100)}},
		{RoleLabel: "same", ExternalIDLabel: "same"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func TestGlobMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"*", "", true},
		{"*", "anything/at/all", true},
		{"a*c", "abc", true},
		{"a*c", "ab/c", true},
		{"a*c", "abd", false},
		{"a**c", "ac", true},
		{"*b*b*", "abab", true},
		{"*b*b*", "ab", false},
		{"a?c", "abc", false}, // ? is literal
		{"a?c", "a?c", true},
		{"x*", "y", false},
		{"*x", strings.Repeat("a", 1000), false},
	}
	for _, tt := range tests {
		if got := globMatch(tt.pattern, tt.s); got != tt.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

func TestParseBaseARN(t *testing.T) {
	t.Parallel()
	tests := []struct {
		arn      string
		want     Base
		wantName string
		ok       bool
	}{
		{"arn:aws:iam::123456789012:role/host-role", base, "host-role", true},
		{"arn:aws:iam::123456789012:role/path/host-role", base, "host-role", true},
		{"arn:aws-us-gov:sts::123456789012:assumed-role/host-role/cert-session", Base{"123456789012", "aws-us-gov"}, "host-role", true},
		{"arn:aws:sts::123456789012:assumed-role/host-role", base, "host-role", true},
		{"arn:aws:iam::123456789012:user/u", Base{}, "", false},
		{"arn:aws:iam::1234:role/r", Base{}, "", false},
		{"", Base{}, "", false},
		{"arn:aws:sts::123456789012:assumed-role//s", Base{}, "", false},
	}
	for _, tt := range tests {
		b, name, err := ParseBaseARN(tt.arn)
		if (err == nil) != tt.ok || b != tt.want || name != tt.wantName {
			t.Errorf("ParseBaseARN(%q) = %+v, %q, %v", tt.arn, b, name, err)
		}
		if err != nil && !errors.Is(err, ErrBase) {
			t.Errorf("ParseBaseARN(%q) error %v is not ErrBase", tt.arn, err)
		}
	}
}

var sessionRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

func TestSessionName(t *testing.T) {
	t.Parallel()
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct{ name, id, want string }{
		{"web-1", id, "web-1"},
		{"/web-1", id, "web-1"},
		{"my_app.v2", id, "my_app.v2"},
		{"", id, "0123456789ab"},
		{"x", id, "0123456789ab"},
		{"a b/c", id, "a-b-c"},
		{strings.Repeat("n", 80), id, strings.Repeat("n", 64)},
		{"", "", "per-docker-roles"},
		{"", "z", "per-docker-roles"},
		{"日本", "", "per-docker-roles"},
	}
	for _, tt := range tests {
		if got := SessionName(tt.name, tt.id); got != tt.want {
			t.Errorf("SessionName(%q, %q) = %q, want %q", tt.name, tt.id, got, tt.want)
		}
	}
}

func FuzzSessionName(f *testing.F) {
	f.Add("web-1", "0123456789abcdef")
	f.Add("", "")
	f.Add("日本語", "x")
	f.Add(strings.Repeat("-", 70), "--")
	f.Fuzz(func(t *testing.T, name, id string) {
		got := SessionName(name, id)
		if !sessionRE.MatchString(got) {
			t.Fatalf("SessionName(%q, %q) = %q: not a valid RoleSessionName", name, id, got)
		}
	})
}

func FuzzSelect(f *testing.F) {
	for _, s := range []string{"r", "a/b/r", "arn:aws:iam::123456789012:role/x", "arn:aws:iam::999999999999:role/x", "", "arn:aws:iam::123456789012:role/"} {
		f.Add(s, "ext-id")
	}
	p, err := New(Config{})
	if err != nil {
		f.Fatal(err)
	}
	arnRE := regexp.MustCompile(`^arn:aws:iam::123456789012:role(/[\x21-\x7e]*)?/[\w+=,.@-]{1,64}$`)
	f.Fuzz(func(t *testing.T, value, ext string) {
		r, err := p.Select(map[string]string{DefaultRoleLabel: value, DefaultExternalIDLabel: ext}, base)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrNotAllowed) {
				t.Fatalf("Select(%q): %v is not a sentinel", value, err)
			}
			return
		}
		if !arnRE.MatchString(r.ARN) || !strings.HasSuffix(r.ARN, "/"+r.Name) {
			t.Fatalf("Select(%q) = %+v: ARN outside the base account or malformed", value, r)
		}
	})
}

// FuzzValidators checks the hand-written validators against the regexps
// of the IAM/STS references they implement.
func FuzzValidators(f *testing.F) {
	for _, s := range []string{"", "a", "aws", "aws-cn", "aws-us-gov", "aws-", "aws--cn", "awsx", "123456789012", "12345678901a", "a_Z0+=,.@-", "ext:id/x", strings.Repeat("a", 64), strings.Repeat("a", 65)} {
		f.Add(s)
	}
	nameRE := regexp.MustCompile(`^[\w+=,.@-]{1,64}$`)
	accountRE := regexp.MustCompile(`^[0-9]{12}$`)
	partitionRE := regexp.MustCompile(`^aws(-[a-z]+)*$`)
	extRE := regexp.MustCompile(`^[\w+=,.@:/-]+$`)
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validRoleName(s), nameRE.MatchString(s); got != want {
			t.Errorf("validRoleName(%q) = %v, regexp says %v", s, got, want)
		}
		if got, want := validAccount(s), accountRE.MatchString(s); got != want {
			t.Errorf("validAccount(%q) = %v, regexp says %v", s, got, want)
		}
		if got, want := validPartition(s), partitionRE.MatchString(s); got != want {
			t.Errorf("validPartition(%q) = %v, regexp says %v", s, got, want)
		}
		if got, want := validExternalID(s), len(s) >= 2 && len(s) <= 1224 && extRE.MatchString(s); got != want {
			t.Errorf("validExternalID(%q) = %v, regexp says %v", s, got, want)
		}
	})
}
