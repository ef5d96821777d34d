package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestCleanRedactsThenTruncates(t *testing.T) {
	t.Parallel()
	secret := strings.Repeat("s", 40)
	tests := []struct {
		name, in   string
		want       string // substring
		mustNotHas string
	}{
		{"json", `{"AccessKeyId":"ASIAX","SecretAccessKey":"` + secret + `","Token":"tok\"en"}`, `"SecretAccessKey":"<redacted>","Token":"<redacted>"`, secret},
		{"spaced", `{"Token" : "` + secret + `"}`, `"Token" : "<redacted>"`, secret},
		{"long", `{"Code":"` + strings.Repeat("x", 3000) + `","SecretAccessKey":"` + secret + `"}`, "...(truncated)", secret},
		{"plain", "e2e-role", "e2e-role", "<redacted>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := clean([]byte(tt.in))
			if !strings.Contains(got, tt.want) || strings.Contains(got, tt.mustNotHas) {
				t.Errorf("clean(%q) = %q, want it to contain %q and not %q", tt.in, got, tt.want, tt.mustNotHas)
			}
			if len(got) > maxBody+len("...(truncated)") {
				t.Errorf("clean output is %d bytes, want at most %d", len(got), maxBody)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"nope"}, {"loop", "0", "1s"}, {"loop", "3", "forever"}, {"loop", "3"}, {"imds-raw", "token"}, {"imds-raw", "bogus", "x"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 2 || out.Len() != 0 || !strings.Contains(errb.String(), "usage:") {
			t.Errorf("run(%q) = %d, stdout %q, stderr %q; want 2, nothing, usage", args, code, out.String(), errb.String())
		}
	}
}

func TestParseInterval(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"2s", 2 * time.Second, true},
		{"500ms", 500 * time.Millisecond, true},
		{"2.5", 2500 * time.Millisecond, true},
		{"soon", 0, false},
	}
	for _, tt := range tests {
		got, err := parseInterval(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseInterval(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
