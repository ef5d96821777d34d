package doctor

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestPrintRendersChecklistWithFixes(t *testing.T) {
	t.Parallel()
	rep := Report{Entries: []Entry{
		{Name: "kernel", Result: Result{Status: OK, Detail: "6.18.44 (x86_64)"}},
		{Name: "upstream", Result: Result{Status: Fail, Detail: "connection refused", Fix: "start the helper"}},
		{Name: "redirect", Result: Result{Status: Warn, Detail: "line one\nline two", Fix: "first\nsecond"}},
		{Name: "sts", Result: Result{Status: Skip, Detail: "no base credentials", Fix: "never shown for SKIP"}},
		{Name: "btf", Result: Result{Status: OK, Detail: "present", Fix: "never shown for OK"}},
	}}
	var b bytes.Buffer
	if err := rep.Print(&b); err != nil {
		t.Fatal(err)
	}
	want := `[ OK ] kernel   6.18.44 (x86_64)
[FAIL] upstream connection refused
      fix: start the helper
[WARN] redirect line one
                line two
      fix: first
           second
[SKIP] sts      no base credentials
[ OK ] btf      present

2 ok, 1 warning(s), 1 failed, 1 skipped: something blocks operation
`
	if got := b.String(); got != want {
		t.Errorf("Print:\n%s\nwant:\n%s", got, want)
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		statuses []Status
		want     int
	}{
		{"empty", nil, 0},
		{"all ok", []Status{OK, OK}, 0},
		{"warnings do not block", []Status{OK, Warn, Warn}, 0},
		{"skips do not block", []Status{Skip, OK}, 0},
		{"one failure blocks", []Status{OK, Warn, Fail, Skip}, 1},
		{"failure first", []Status{Fail, OK}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var rep Report
			for i, s := range tc.statuses {
				rep.Entries = append(rep.Entries, Entry{Name: string(rune('a' + i)), Result: Result{Status: s}})
			}
			if got := rep.ExitCode(); got != tc.want {
				t.Errorf("ExitCode = %d, want %d", got, tc.want)
			}
			if rep.Failed() != (tc.want == 1) {
				t.Errorf("Failed = %v, want %v", rep.Failed(), tc.want == 1)
			}
			var b bytes.Buffer
			if err := rep.Print(&b); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(b.String(), "something blocks operation") != (tc.want == 1) {
				t.Errorf("summary does not match the exit code:\n%s", b.String())
			}
		})
	}
}

func TestRunOneBoundsStuckAndCrashingChecks(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // after the parallel subtests
	for _, tc := range []struct {
		name   string
		run    func(context.Context) Result
		want   Status
		detail string
	}{
		{"ignores its context", func(context.Context) Result { <-release; return Result{Status: OK} }, Fail, "no answer within"},
		{"honours its context", func(ctx context.Context) Result { <-ctx.Done(); return Result{Status: Warn, Detail: ctx.Err().Error()} }, Warn, "deadline"},
		{"panics", func(context.Context) Result { panic("boom") }, Fail, "check crashed: boom"},
		{"answers", func(context.Context) Result { return Result{Status: OK, Detail: "fine"} }, OK, "fine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const timeout = 100 * time.Millisecond
			start := time.Now()
			r := runOne(context.Background(), Check{Name: tc.name, Run: tc.run}, timeout)
			took := time.Since(start)
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.detail) {
				t.Errorf("got %v %q, want %v containing %q", r.Status, r.Detail, tc.want, tc.detail)
			}
			if took > timeout+2*time.Second {
				t.Errorf("took %v with a %v timeout", took, timeout)
			}
			if r.Status == Fail && r.Fix == "" {
				t.Error("a failure without a fix")
			}
		})
	}
}

func TestRunOneSkipsWhenCancelled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	r := runOne(ctx, Check{Name: "x", Run: func(context.Context) Result { ran = true; return Result{} }}, time.Second)
	if ran || r.Status != Skip {
		t.Errorf("ran=%v status=%v, want a skip without running", ran, r.Status)
	}
}
