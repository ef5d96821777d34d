package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestDoctorCommandFailsWithAFix(t *testing.T) {
	var out, errb bytes.Buffer
	code := doctorCommand([]string{"--upstream", "http://127.0.0.1:1", "--admin-listen", "127.0.0.1:1",
		"--bpf-pin-dir", "/sys/fs/bpf/pdr-doctor-cmd-test-absent"}, &out, &errb)
	t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	if code == 0 {
		t.Fatal("doctor exited 0 with an unreachable upstream")
	}
	s := out.String()
	for _, want := range []string{"[FAIL] upstream", "127.0.0.1:1", "      fix: ", "aws-signing-helper", "something blocks operation"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !strings.Contains(s, "[SKIP] sts") {
		t.Error("STS was not skipped without base credentials")
	}
}

func TestDoctorCommandUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"--no-such-flag"}, 2},
		{[]string{"stray"}, 2},
		{[]string{"--help"}, 0},
	} {
		var out, errb bytes.Buffer
		if got := doctorCommand(tc.args, &out, &errb); got != tc.want {
			t.Errorf("doctor %q = %d, want %d (stderr %q)", tc.args, got, tc.want, errb.String())
		}
	}
}

func TestDoctorCommandReadsEnvironment(t *testing.T) {
	t.Setenv("PDR_UPSTREAM", "http://127.0.0.1:2")
	var out, errb bytes.Buffer
	code := doctorCommand([]string{"--admin-listen", "", "--bpf-pin-dir", "/sys/fs/bpf/pdr-doctor-cmd-test-absent"}, &out, &errb)
	if code == 0 || !strings.Contains(out.String(), "http://127.0.0.1:2") {
		t.Errorf("PDR_UPSTREAM not applied (exit %d):\n%s", code, out.String())
	}
}
