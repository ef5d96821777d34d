package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/fakeaws"
	"go.uber.org/zap"
)

// ErrNotLoopback is fakeaws.ErrNotLoopback: the fakes listen on loopback only.
var ErrNotLoopback = fakeaws.ErrNotLoopback

// UpstreamConfig describes the fake AWS side and the real helper in front of
// it. Zero fields get the defaults noted.
type UpstreamConfig struct {
	Account  string // 123456789012
	Region   string // us-east-1
	RoleName string // the helper's (base) role: pdr-base
	// ExtraRoles are further role ARNs the Roles Anywhere profile allows.
	ExtraRoles []string
	// SessionDuration is the helper's --session-duration (1h).
	SessionDuration time.Duration
	// MaxDuration is the profile's cap (12h).
	MaxDuration time.Duration
	KeyType     fakeaws.KeyType // ECDSA P-256

	// Trust and Roles configure the STS fake. Default trust: the base role
	// may assume any role of the account.
	Trust []fakeaws.TrustRule
	Roles map[string]fakeaws.RolePolicy
	// STSIssueLifetime shortens every AssumeRole credential (see
	// fakeaws.STSConfig.IssueLifetime); 0 = as requested.
	STSIssueLifetime time.Duration

	// PKIDir receives ca.crt, leaf.crt, leaf.key... (required).
	PKIDir string
	// HomeDir is the helper's $HOME, so it reads no real ~/.aws (default PKIDir).
	HomeDir string
	// RAListen and STSListen are loopback listen addresses (127.0.0.1:0).
	RAListen, STSListen string

	// HelperPath is the aws_signing_helper binary; empty builds it (cached).
	HelperPath string
	// StartHelper runs `serve` as a child process; HelperPort is its port
	// (0 picks a free one, kept across Stop/Start).
	StartHelper bool
	HelperPort  int

	// Now is the fakes' clock (time.Now).
	Now func() time.Time
}

func (c *UpstreamConfig) setDefaults() {
	if c.Account == "" {
		c.Account = "123456789012"
	}
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	if c.RoleName == "" {
		c.RoleName = "pdr-base"
	}
	if c.SessionDuration == 0 {
		c.SessionDuration = time.Hour
	}
	if c.RAListen == "" {
		c.RAListen = "127.0.0.1:0"
	}
	if c.STSListen == "" {
		c.STSListen = "127.0.0.1:0"
	}
	if c.HomeDir == "" {
		c.HomeDir = c.PKIDir
	}
}

// Upstream is a running Roles Anywhere fake, STS fake and (optionally) the
// real aws_signing_helper serving credentials from them.
type Upstream struct {
	Store *fakeaws.Store
	RA    *fakeaws.RolesAnywhere
	STS   *fakeaws.STS
	PKI   *fakeaws.PKI

	RAURL  string // http://127.0.0.1:N, the helper's --endpoint
	STSURL string // http://127.0.0.1:N, the broker's STS endpoint
	// HelperURL is http://127.0.0.1:<port> of `serve` (set even when stopped).
	HelperURL string

	Account, Region                     string
	TrustAnchorARN, ProfileARN, RoleARN string

	cfg     UpstreamConfig
	log     *zap.Logger
	servers []*http.Server
	helper  string
	port    int

	mu   sync.Mutex
	proc *exec.Cmd
	done chan struct{} // closed when proc exits
}

// NewUpstream starts the fakes on loopback and, if cfg.StartHelper, the
// helper; Close stops everything.
func NewUpstream(ctx context.Context, cfg UpstreamConfig, log *zap.Logger) (*Upstream, error) {
	cfg.setDefaults()
	if cfg.PKIDir == "" {
		return nil, errors.New("upstream: PKIDir is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	u := &Upstream{
		cfg:            cfg,
		log:            log,
		Account:        cfg.Account,
		Region:         cfg.Region,
		RoleARN:        fmt.Sprintf("arn:aws:iam::%s:role/%s", cfg.Account, cfg.RoleName),
		TrustAnchorARN: fmt.Sprintf("arn:aws:rolesanywhere:%s:%s:trust-anchor/0d7c1bd6-7a3e-4c5e-9c1a-000000000001", cfg.Region, cfg.Account),
		ProfileARN:     fmt.Sprintf("arn:aws:rolesanywhere:%s:%s:profile/6f1f7b5e-5d0a-4b8e-8e2f-000000000002", cfg.Region, cfg.Account),
	}
	pki, err := fakeaws.NewPKI(cfg.PKIDir)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	u.PKI = pki
	u.Store = fakeaws.NewStore(cfg.Now)
	u.RA = fakeaws.NewRolesAnywhere(u.Store, fakeaws.RAConfig{
		CA:             pki.CA,
		Region:         cfg.Region,
		TrustAnchorARN: u.TrustAnchorARN,
		ProfileARN:     u.ProfileARN,
		RoleARNs:       append([]string{u.RoleARN}, cfg.ExtraRoles...),
		MaxDuration:    cfg.MaxDuration,
		Log:            log.Named("rolesanywhere"),
	})
	trust := cfg.Trust
	if trust == nil {
		trust = []fakeaws.TrustRule{{Principal: u.RoleARN, Role: fmt.Sprintf("arn:aws:iam::%s:role/*", cfg.Account)}}
	}
	u.STS = fakeaws.NewSTS(u.Store, fakeaws.STSConfig{Trust: trust, Roles: cfg.Roles, Region: cfg.Region, IssueLifetime: cfg.STSIssueLifetime})

	if u.RAURL, err = u.serve(cfg.RAListen, u.RA); err != nil {
		u.Close()
		return nil, err
	}
	if u.STSURL, err = u.serve(cfg.STSListen, u.STS); err != nil {
		u.Close()
		return nil, err
	}
	if !cfg.StartHelper {
		return u, nil
	}
	u.helper = cfg.HelperPath
	if u.helper == "" {
		if u.helper, err = BuildSigningHelper(ctx, log); err != nil {
			u.Close()
			return nil, err
		}
	}
	u.port = cfg.HelperPort
	if u.port == 0 {
		if u.port, err = freeLoopbackPort(); err != nil {
			u.Close()
			return nil, err
		}
	}
	u.HelperURL = fmt.Sprintf("http://127.0.0.1:%d", u.port)
	if err := u.Start(); err != nil {
		u.Close()
		return nil, err
	}
	return u, nil
}

// HelperArgs is the `serve` command line (without the binary) for the
// helper against these fakes on port.
func (u *Upstream) HelperArgs(port int) []string {
	leaf := u.PKI.Leaf
	if u.cfg.KeyType == fakeaws.RSA2048 {
		leaf = u.PKI.RSALeaf
	}
	return []string{"serve",
		"--certificate", leaf.CertPath,
		"--private-key", leaf.KeyPath,
		"--trust-anchor-arn", u.TrustAnchorARN,
		"--profile-arn", u.ProfileARN,
		"--role-arn", u.RoleARN,
		"--endpoint", u.RAURL,
		"--region", u.Region,
		"--session-duration", strconv.Itoa(int(u.cfg.SessionDuration / time.Second)),
		"--port", strconv.Itoa(port),
	}
}

// Start runs the helper (again, on the same port) and waits until it
// answers a token PUT. It is a no-op while the helper runs. The helper only
// listens after its first CreateSession attempt (with the SDK's retries:
// 4 tries on 500, several seconds of back-off on 503), hence the long wait.
func (u *Upstream) Start() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.helper == "" {
		return errors.New("upstream: started without a helper (StartHelper false)")
	}
	if u.proc != nil {
		return nil
	}
	cmd := exec.Command(u.helper, u.HelperArgs(u.port)...)
	// A clean environment: no AWS_* variables, proxies or real ~/.aws may
	// steer the helper anywhere but the loopback fake.
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + u.cfg.HomeDir, "AWS_CONFIG_FILE=" + filepath.Join(u.cfg.HomeDir, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(u.cfg.HomeDir, "no-aws-credentials"), "AWS_EC2_METADATA_DISABLED=true"}
	cmd.SysProcAttr = helperSysProcAttr()
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", u.helper, err)
	}
	done := make(chan struct{})
	hlog := u.log.Named("aws_signing_helper").With(zap.Int("pid", cmd.Process.Pid))
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			hlog.Info(sc.Text())
		}
		_, _ = io.Copy(io.Discard, pr) // a line too long for the scanner must not block the helper
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		<-scanned // no logging after done: a test logger is dead by then
		hlog.Info("helper exited", zap.Error(err))
		close(done)
	}()
	u.proc, u.done = cmd, done
	if err := waitHelper(u.HelperURL, done, 60*time.Second); err != nil {
		u.stopLocked()
		return err
	}
	hlog.Info("helper serving", zap.String("url", u.HelperURL))
	return nil
}

// Stop kills the helper (an upstream outage) and waits for it to exit.
func (u *Upstream) Stop() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.stopLocked()
	return nil
}

// HelperRunning reports whether the helper process is up.
func (u *Upstream) HelperRunning() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.proc != nil
}

func (u *Upstream) stopLocked() {
	if u.proc == nil {
		return
	}
	_ = u.proc.Process.Kill()
	<-u.done
	u.proc, u.done = nil, nil
}

// Close stops the helper and the fakes.
func (u *Upstream) Close() error {
	u.mu.Lock()
	u.stopLocked()
	u.mu.Unlock()
	// Shutdown lets in-flight handlers finish, so none logs after a test ends.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, s := range u.servers {
		if err := s.Shutdown(ctx); err != nil {
			_ = s.Close()
		}
	}
	return nil
}

func (u *Upstream) serve(addr string, h http.Handler) (string, error) {
	ln, err := fakeaws.ListenLoopback(addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 64 << 10}
	u.servers = append(u.servers, srv)
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), nil
}

// freeLoopbackPort picks a free port below the kernel's ephemeral range
// (32768+), so that while the helper is stopped neither a :0 listener of a
// parallel test nor an outgoing connection takes its port before Start.
func freeLoopbackPort() (int, error) {
	var lastErr error
	for range 100 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			lastErr = err
			continue
		}
		ln.Close()
		return port, nil
	}
	return 0, fmt.Errorf("find free port: %w", lastErr)
}

// waitHelper polls the token endpoint until the helper answers 200 or exits.
func waitHelper(base string, exited <-chan struct{}, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodPut, base+"/latest/api/token", nil)
		req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
		if resp, err := c.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("aws_signing_helper exited before serving on %s", base)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("aws_signing_helper not answering on %s after %s", base, timeout)
}

// CommandLine renders HelperArgs as a shell command for humans (the demo).
func (u *Upstream) CommandLine(helperPath string, port int) string {
	parts := []string{shellQuote(helperPath)}
	for _, a := range u.HelperArgs(port) {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
