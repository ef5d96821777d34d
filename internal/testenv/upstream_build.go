package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// ErrNoHelperModule means tools/signinghelper/go.mod was not found above the
// working directory, so the helper cannot be built.
var ErrNoHelperModule = errors.New("tools/signinghelper module not found")

// helperEnv names a prebuilt aws_signing_helper to use instead of building.
const helperEnv = "PDR_SIGNING_HELPER"

// BuildSigningHelper returns the path of the real aws_signing_helper
// (rolesanywhere-credential-helper) at the version pinned in
// tools/signinghelper. It uses $PDR_SIGNING_HELPER if set; otherwise it
// builds with cgo into a cache shared with scripts/build-signing-helper.sh
// (same key: go.mod+go.sum hash, Go version, GOOS/GOARCH), so only the first
// build on a machine pays for it. Concurrent callers (parallel test
// packages) serialize on a lock file.
func BuildSigningHelper(ctx context.Context, log *zap.Logger) (string, error) {
	if p := os.Getenv(helperEnv); p != "" {
		if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s=%s is not an executable: %v", helperEnv, p, err)
		}
		return p, nil
	}
	modDir, err := findHelperModule()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	var sum bytes.Buffer
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(modDir, f))
		if err != nil {
			return "", fmt.Errorf("read helper module %s: %w", f, err)
		}
		sum.Write(b)
	}
	h := sha256.Sum256(sum.Bytes())
	out, err := exec.CommandContext(ctx, goBin, "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %w", err)
	}
	key := fmt.Sprintf("%s-%s-%s-%s", hex.EncodeToString(h[:])[:16], strings.TrimSpace(string(out)), runtime.GOOS, runtime.GOARCH)
	cacheRoot := os.Getenv("PDR_CACHE_DIR")
	if cacheRoot == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = filepath.Join(os.TempDir(), "cache")
		}
		cacheRoot = filepath.Join(base, "per-docker-roles")
	}
	dir := filepath.Join(cacheRoot, "signing-helper", key)
	bin := filepath.Join(dir, "rolesanywhere-credential-helper")
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create helper cache %s: %w", dir, err)
	}
	unlock, err := lockFile(filepath.Join(dir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if isExecutable(bin) { // built by whoever held the lock before us
		return bin, nil
	}
	tmp := bin + ".tmp"
	start := time.Now()
	log.Info("building aws_signing_helper (cgo, first time on this machine)", zap.String("out", bin))
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-o", tmp, "github.com/aws/rolesanywhere-credential-helper")
	cmd.Dir = modDir
	// GOWORK=off: a go.work of the main module must not pull the helper's
	// cgo dependencies into our build graph, nor ours into its.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "GOFLAGS=-mod=readonly -buildvcs=false", "GOWORK=off")
	if combined, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("build aws_signing_helper in %s: %w\n%s", modDir, err, combined)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("install helper %s: %w", bin, err)
	}
	log.Info("built aws_signing_helper", zap.Duration("duration", time.Since(start)))
	return bin, nil
}

func findHelperModule() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find helper module: %w", err)
	}
	for {
		cand := filepath.Join(dir, "tools", "signinghelper")
		if _, err := os.Stat(filepath.Join(cand, "go.mod")); err == nil {
			return cand, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNoHelperModule
		}
		dir = parent
	}
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func lockFile(p string) (func(), error) {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
