package clientimg

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv/priv"
)

func TestParseLdd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr error
	}{
		{
			name: "binary",
			in: "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x7f)\n" +
				"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n",
			want: []string{"/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"},
		},
		{
			name: "several files and a static one",
			in: "/usr/lib/a.so:\n\tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x1)\n" +
				"/usr/lib/b.so:\n\tstatically linked\n",
			want: []string{"/lib/x86_64-linux-gnu/libssl.so.3"},
		},
		{name: "missing", in: "\tlibffi.so.8 => not found\n", wantErr: errLibNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseLdd(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseDepends(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want []string
	}{
		{"python3-botocore (>= 1.6.6), python3-requests, python3:any", []string{"python3-botocore", "python3-requests", "python3"}},
		{"python3-six (>= 1.5) | python3-six-compat, tzdata", []string{"python3-six", "tzdata"}},
		{"", nil},
	}
	for _, tt := range tests {
		if got := parseDepends(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseDepends(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestWantDistFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		path string
		want bool
	}{
		{pyDistPackages + "/boto3/session.py", true},
		{pyDistPackages + "/botocore/data/endpoints.json", true},
		{pyDistPackages + "/botocore/data/sts/2011-06-15/service-2.json", true},
		{pyDistPackages + "/botocore/data/s3/2006-03-01/service-2.json", false},
		{pyDistPackages + "/botocore/__pycache__/session.cpython-311.pyc", false},
		{pyDistPackages + "/dateutil/tests/test_tz.py", false},
		{pyDistPackages + "/six.py", true},
	}
	for _, tt := range tests {
		if got := wantDistFile(tt.path); got != tt.want {
			t.Errorf("wantDistFile(%s) = %v, want %v", tt.path, got, tt.want)
		}
	}
}

// TestPythonRootfs checks the assembled file set on this host: the pieces
// an import of boto3 over plain http needs are there, the bulk is not.
func TestPythonRootfs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	files, err := PythonRootfs(ctx)
	if errors.Is(err, ErrNoPython) {
		priv.Unsupported(t, "Debian python3-boto3", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	has := func(pred func(string) bool) bool {
		for d := range files {
			if pred(d) {
				return true
			}
		}
		return false
	}
	for _, want := range []string{
		pyBinary, pyStdlib + "/os.py", pyStdlib + "/encodings/utf_8.py", pyStdlib + "/site.py",
		pyDistPackages + "/boto3/__init__.py", pyDistPackages + "/botocore/data/sts/2011-06-15/service-2.json",
		pyDistPackages + "/dateutil/parser/_parser.py", pyDistPackages + "/urllib3/__init__.py",
	} {
		if _, ok := files[want]; !ok {
			t.Errorf("rootfs lacks %s", want)
		}
	}
	for _, lib := range []string{"libc.so.", "libssl.so.", "libcrypto.so.", "libffi.so.", "libz.so.", "libexpat.so.", "ld-linux"} {
		if !has(func(d string) bool { return strings.Contains(filepath.Base(d), lib) && !strings.HasPrefix(d, pyStdlib) }) {
			t.Errorf("rootfs lacks a shared library matching %s", lib)
		}
	}
	for _, bad := range []string{"/__pycache__/", "/test/", "/idlelib/", "/tkinter/", "/ensurepip/", "/lib2to3/", "/pydoc_data/", "/botocore/data/s3/"} {
		if has(func(d string) bool { return strings.Contains(d, bad) }) {
			t.Errorf("rootfs holds files under %s", bad)
		}
	}
	for d, src := range files {
		if st, err := os.Stat(src); err != nil || !st.Mode().IsRegular() {
			t.Errorf("%s: source %s is not a regular file (%v)", d, src, err)
		}
	}
	t.Logf("python rootfs: %d files", len(files))
}

// TestSpoolDeterministic: equal inputs give equal hashes (the tag), and a
// one-byte change gives a different one.
func TestSpoolDeterministic(t *testing.T) {
	t.Parallel()
	src := filepath.Join(t.TempDir(), "f")
	hash := func(content string) string {
		t.Helper()
		if err := os.WriteFile(src, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		bc, err := spool(func(tw *tarWriter) error {
			if err := tw.addBytes("Dockerfile", 0o644, []byte("FROM scratch\n")); err != nil {
				return err
			}
			return tw.addFile("rootfs/usr/bin/x", src)
		})
		if err != nil {
			t.Fatal(err)
		}
		defer bc.Close()
		return bc.hash
	}
	a := hash("one")
	time.Sleep(10 * time.Millisecond) // a new mtime must not matter
	if b := hash("one"); a != b {
		t.Errorf("same content hashed %s then %s", a, b)
	}
	if c := hash("two"); a == c {
		t.Errorf("different content hashed the same: %s", a)
	}
}
