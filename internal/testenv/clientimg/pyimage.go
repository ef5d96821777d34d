package clientimg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/client"
)

// The Python image is assembled from Debian's packages installed on the
// host (python3.11-minimal, libpython3.11-stdlib, python3-boto3 and its
// dependencies), never from a pyenv or pip install: a fresh Debian 12
// machine (and .ci/run) reproduces it with apt-get install python3-boto3.
const (
	PyClientScript = "e2e/clients/pyclient/client.py" // relative to the module root
	pyBinary       = "/usr/bin/python3.11"
	pyStdlib       = "/usr/lib/python3.11"
	pyDistPackages = "/usr/lib/python3/dist-packages"
	pyRootPackage  = "python3-boto3"
	// botocoreData holds one JSON model per AWS service (tens of MiB);
	// the client only needs STS and the top-level endpoint/partition files.
	botocoreData = pyDistPackages + "/botocore/data/"
)

// ErrNoPython means Debian's python3.11 or python3-boto3 is not installed.
var ErrNoPython = errors.New("debian python3.11 with python3-boto3 not installed (apt-get install python3-boto3)")

// pyDockerfile compiles the bytecode inside the image, once per tag: the
// host's __pycache__ is left out (not reproducible, often stale), and
// without bytecode every container start recompiles botocore, which takes
// seconds on a loaded machine. The sources carry mtime 0 from the tar, so
// the timestamp-checked .pyc stay valid. PYTHONDONTWRITEBYTECODE keeps
// containers from writing more.
const pyDockerfile = `FROM scratch
COPY rootfs/ /
RUN ["/usr/bin/python3.11", "-m", "compileall", "-q", "-j", "0", "/usr/lib/python3.11", "/usr/lib/python3/dist-packages"]
ENV HOME=/ PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
ENTRYPOINT ["/usr/bin/python3.11", "/client.py"]
`

// skipDirs are stdlib and package directories the client never imports.
func skipDir(name string) bool {
	switch name {
	case "__pycache__", "test", "tests", "idlelib", "tkinter", "turtledemo",
		"ensurepip", "lib2to3", "pydoc_data", "site-packages", "dist-packages":
		return true
	}
	return strings.HasPrefix(name, "config-3") // static libpython and Makefile
}

// skipFile drops bytecode and test-only extension modules.
func skipFile(name string) bool {
	if strings.HasSuffix(name, ".pyc") {
		return true
	}
	for _, p := range []string{"_tkinter.", "_test", "xxlimited", "_ctypes_test.", "_xxtestfuzz.", "xxsubtype."} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// PythonImage builds (or reuses) the boto3 client image.
func PythonImage(ctx context.Context, cli *client.Client) (Image, error) {
	var im Image
	start := time.Now()
	root, err := ModuleRoot(ctx)
	if err != nil {
		return im, err
	}
	files, err := PythonRootfs(ctx)
	if err != nil {
		return im, err
	}
	files["/client.py"] = filepath.Join(root, PyClientScript)
	dsts := make([]string, 0, len(files))
	for d := range files {
		dsts = append(dsts, d)
	}
	sort.Strings(dsts)
	bc, err := spool(func(tw *tarWriter) error {
		if err := tw.addBytes("Dockerfile", 0o644, []byte(pyDockerfile)); err != nil {
			return err
		}
		for _, d := range dsts {
			if err := tw.addFile("rootfs"+d, files[d]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return im, err
	}
	defer bc.Close()
	im.Prepare = time.Since(start)
	if err := ensure(ctx, cli, PythonRepo, bc, &im); err != nil {
		return im, err
	}
	return im, nil
}

// PythonRootfs returns the files of a minimal Python+boto3 root file
// system, as image path → host path (host symlinks are followed, so the
// image holds plain files at the paths the dynamic loader looks up).
func PythonRootfs(ctx context.Context) (map[string]string, error) {
	if _, err := os.Stat(pyBinary); err != nil {
		return nil, fmt.Errorf("python rootfs: %w: %w", ErrNoPython, err)
	}
	files := map[string]string{pyBinary: pyBinary}
	if err := addTree(files, pyStdlib); err != nil {
		return nil, err
	}
	pkgs, err := debClosure(ctx, pyRootPackage)
	if err != nil {
		return nil, err
	}
	for _, p := range pkgs {
		if err := addPackage(ctx, files, p); err != nil {
			return nil, err
		}
	}
	var elves []string
	for dst, src := range files {
		if dst == pyBinary || strings.HasSuffix(dst, ".so") || strings.Contains(dst, ".so.") {
			elves = append(elves, src)
		}
	}
	sort.Strings(elves)
	libs, err := sharedLibs(ctx, elves)
	if err != nil {
		return nil, err
	}
	for _, l := range libs {
		files[l] = l
	}
	return files, nil
}

// addTree adds every wanted regular file under dir (symlinks to files are
// followed; the stdlib has a few, e.g. sitecustomize.py → /etc).
func addTree(files map[string]string, dir string) error {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != dir && skipDir(d.Name()) {
				return filepath.SkipDir
			}
			return nil
		}
		if skipFile(d.Name()) {
			return nil
		}
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			return nil // dangling or non-file symlink: nothing to copy
		}
		files[p] = p
		return nil
	})
	if err != nil {
		return fmt.Errorf("python rootfs: walk %s: %w", dir, err)
	}
	return nil
}

// debClosure returns pkg and the python3-* packages it depends on,
// transitively, as installed (dpkg-query), sorted.
func debClosure(ctx context.Context, pkg string) ([]string, error) {
	seen := map[string]bool{}
	queue := []string{pkg}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f", "${Status}\t${Depends}", p).Output()
		if err != nil {
			return nil, fmt.Errorf("python rootfs: dpkg-query %s: %w: %w", p, ErrNoPython, err)
		}
		status, deps, _ := strings.Cut(string(out), "\t")
		if !strings.HasSuffix(status, " installed") {
			return nil, fmt.Errorf("python rootfs: package %s is %q: %w", p, status, ErrNoPython)
		}
		for _, dep := range parseDepends(deps) {
			if strings.HasPrefix(dep, "python3-") && !seen[dep] {
				queue = append(queue, dep)
			}
		}
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// parseDepends takes the first alternative of each Depends entry, without
// version constraints or architecture qualifiers.
func parseDepends(s string) []string {
	var out []string
	for _, entry := range strings.Split(s, ",") {
		alt, _, _ := strings.Cut(entry, "|")
		name := strings.Fields(alt)
		if len(name) == 0 {
			continue
		}
		n, _, _ := strings.Cut(name[0], ":")
		out = append(out, n)
	}
	return out
}

// addPackage adds pkg's files under dist-packages, skipping tests and the
// botocore models of every service but STS.
func addPackage(ctx context.Context, files map[string]string, pkg string) error {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-L", pkg).Output()
	if err != nil {
		return fmt.Errorf("python rootfs: dpkg-query -L %s: %w", pkg, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		p := sc.Text()
		if !strings.HasPrefix(p, pyDistPackages+"/") || !wantDistFile(p) {
			continue
		}
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			continue // directories, and symlinks to them, come with their files
		}
		files[p] = p
	}
	return sc.Err()
}

func wantDistFile(p string) bool {
	if rest, ok := strings.CutPrefix(p, botocoreData); ok {
		svc, _, nested := strings.Cut(rest, "/")
		if nested && svc != "sts" {
			return false
		}
	}
	rel := strings.TrimPrefix(p, pyDistPackages+"/")
	parts := strings.Split(rel, "/")
	for _, d := range parts[:len(parts)-1] {
		if skipDir(d) {
			return false
		}
	}
	return !skipFile(parts[len(parts)-1])
}

// sharedLibs runs ldd over the ELF files and returns every library and
// loader they need, as the paths the dynamic loader resolved them to.
func sharedLibs(ctx context.Context, elves []string) ([]string, error) {
	seen := map[string]bool{}
	// Batches keep the command line short; ldd resolves the full closure.
	for i := 0; i < len(elves); i += 64 {
		batch := elves[i:min(i+64, len(elves))]
		cmd := exec.CommandContext(ctx, "ldd", batch...)
		// ldd exits 1 when one argument is not dynamic (some .so are
		// linker scripts or static): parse what it printed regardless.
		out, err := cmd.Output()
		if err != nil && len(out) == 0 {
			return nil, fmt.Errorf("python rootfs: ldd: %w", err)
		}
		libs, err := parseLdd(string(out))
		if err != nil {
			return nil, fmt.Errorf("python rootfs: %w", err)
		}
		for _, l := range libs {
			seen[l] = true
		}
	}
	out := make([]string, 0, len(seen))
	for l := range seen {
		out = append(out, l)
	}
	sort.Strings(out)
	return out, nil
}

// errLibNotFound reports a dependency the host itself cannot resolve.
var errLibNotFound = errors.New("shared library not found")

// parseLdd extracts library paths from ldd output: "name => /path (addr)"
// and, for the loader, "/path (addr)". Per-file headers ("file:") and the
// vDSO are ignored.
func parseLdd(out string) ([]string, error) {
	var libs []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasSuffix(line, ":") {
			continue
		}
		if strings.Contains(line, "=> not found") {
			return nil, fmt.Errorf("ldd: %s: %w", line, errLibNotFound)
		}
		target := line
		if _, after, ok := strings.Cut(line, "=>"); ok {
			target = strings.TrimSpace(after)
		}
		f := strings.Fields(target)
		if len(f) == 0 || !strings.HasPrefix(f[0], "/") {
			continue
		}
		libs = append(libs, f[0])
	}
	return libs, nil
}
