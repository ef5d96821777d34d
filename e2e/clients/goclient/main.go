// Command goclient is the Go SDK client of the end-to-end harness. It runs
// inside a FROM-scratch container and gets credentials exactly as an
// unmodified workload would: aws-sdk-go-v2's default credential chain, which
// ends at IMDS (169.254.169.254, reached through the product's eBPF
// redirect; AWS_EC2_METADATA_SERVICE_ENDPOINT, honoured by the SDK itself,
// points it elsewhere in tests). It never prints secrets or session tokens.
//
// Usage:
//
//	goclient [whoami]                 one GetCallerIdentity
//	goclient loop N INTERVAL          N attempts, INTERVAL apart, one aws.Config
//	goclient imds-raw token TTL       PUT a token; prints the token
//	goclient imds-raw get PATH [TOK]  GET with a token (fetched when omitted)
//	goclient imds-raw v1 PATH         GET without a token
//	goclient imds-raw xff PATH        request carrying X-Forwarded-For
//
// Environment: STS_ENDPOINT (STS base endpoint), AWS_REGION;
// PDR_SUBCGROUP=NAME first moves the process into a new sub-cgroup NAME of
// the container's own cgroup, as a workload that manages its own cgroups
// would (needs CAP_SYS_ADMIN and a private cgroup namespace), and prints
// one JSON line to stderr with the sub-cgroup's path and id and the
// container cgroup's id.
// Exit status 0 when every call succeeded, 1 otherwise, 2 on bad usage, 3
// when PDR_SUBCGROUP could not be entered.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
)

// callTimeout bounds every network call so a missed redirect fails fast.
const callTimeout = 5 * time.Second

// maxBody is how much of an IMDS body imds-raw prints.
const maxBody = 2048

// result is the one JSON line printed per attempt.
type result struct {
	SDK        string `json:"sdk"`
	Attempt    int    `json:"attempt"`
	ARN        string `json:"arn,omitempty"`
	KeyPrefix  string `json:"access_key_id_prefix,omitempty"`
	Expiration string `json:"expiration,omitempty"`
	Error      string `json:"error,omitempty"`
}

func main() {
	if sub := os.Getenv("PDR_SUBCGROUP"); sub != "" {
		rep, err := enterSubcgroup(subcgroupMount, sub)
		if err != nil {
			rep.Error = err.Error()
		}
		_ = json.NewEncoder(os.Stderr).Encode(rep)
		if err != nil {
			os.Exit(3)
		}
	}
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// subcgroupMount is where PDR_SUBCGROUP mounts cgroup2: a directory of the
// container's own writable root, because Docker's /sys/fs/cgroup is
// read-only and, on cgroup v1 hosts, not cgroup2 at all.
const subcgroupMount = "/pdr-cgroup2"

// cgroup2Magic is CGROUP2_SUPER_MAGIC, the f_type of a cgroup2 mount.
const cgroup2Magic = 0x63677270

// subcgroupReport is the stderr line PDR_SUBCGROUP prints. The ids are
// inode numbers of the cgroup2 directories, the same numbers the kernel's
// bpf_get_current_cgroup_id returns and the daemon logs as cgroup_id.
type subcgroupReport struct {
	Path     string `json:"subcgroup"`        // from /proc/self/cgroup, relative to the namespace root
	ID       uint64 `json:"cgroup_id"`        // the sub-cgroup
	ParentID uint64 `json:"parent_cgroup_id"` // the namespace root: the container's own cgroup
	Error    string `json:"error,omitempty"`
}

// enterSubcgroup mounts cgroup2 at mnt (in a private cgroup namespace its
// root is the container's cgroup), creates the child name and moves the
// whole process into it. Writing "0" to cgroup.procs moves the writer's
// thread group, so every thread of the Go runtime connects from there.
func enterSubcgroup(mnt, name string) (subcgroupReport, error) {
	var rep subcgroupReport
	if err := validSubcgroup(name); err != nil {
		return rep, err
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil || st.Type != cgroup2Magic {
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			return rep, fmt.Errorf("subcgroup: mkdir %s: %w", mnt, err)
		}
		if err := syscall.Mount("cgroup2", mnt, "cgroup2", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
			return rep, fmt.Errorf("subcgroup: mount cgroup2 at %s (needs CAP_SYS_ADMIN): %w", mnt, err)
		}
	}
	dir := filepath.Join(mnt, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return rep, fmt.Errorf("subcgroup: mkdir %s: %w", dir, err)
	}
	procs := filepath.Join(dir, "cgroup.procs")
	if err := os.WriteFile(procs, []byte("0"), 0o644); err != nil {
		return rep, fmt.Errorf("subcgroup: write %s: %w", procs, err)
	}
	var err error
	if rep.ParentID, err = cgroup.ID(mnt); err != nil {
		return rep, fmt.Errorf("subcgroup: %w", err)
	}
	if rep.ID, err = cgroup.ID(dir); err != nil {
		return rep, fmt.Errorf("subcgroup: %w", err)
	}
	// The kernel's view, not ours: the move must show in /proc/self/cgroup.
	if rep.Path, err = cgroup.ProcPath(os.Getpid()); err != nil {
		return rep, fmt.Errorf("subcgroup: %w", err)
	}
	if rep.Path != "/"+name {
		return rep, fmt.Errorf("subcgroup: in cgroup %s after moving to /%s (is the cgroup namespace private?)", rep.Path, name)
	}
	return rep, nil
}

// validSubcgroup allows one path element only, so the variable cannot
// point the move anywhere but a child of the container's cgroup.
func validSubcgroup(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("subcgroup: %q must be a single directory name", name)
	}
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	mode := "whoami"
	if len(args) > 0 {
		mode, args = args[0], args[1:]
	}
	switch mode {
	case "whoami":
		return loop(ctx, 1, 0, stdout)
	case "loop":
		if len(args) != 2 {
			return usage(stderr, "loop N INTERVAL")
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 1 || n > 1000 {
			return usage(stderr, "loop: N must be 1..1000")
		}
		d, err := parseInterval(args[1])
		if err != nil || d < 0 || d > time.Hour {
			return usage(stderr, "loop: INTERVAL must be a duration such as 2s or 500ms, or seconds")
		}
		return loop(ctx, n, d, stdout)
	case "imds-raw":
		return imdsRaw(ctx, args, stdout, stderr)
	default:
		return usage(stderr, "unknown mode "+mode)
	}
}

// parseInterval accepts a Go duration or plain seconds ("2.5"), as the
// Python client does.
func parseInterval(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("interval %q: %w", s, err)
	}
	return time.Duration(f * float64(time.Second)), nil
}

func usage(w io.Writer, msg string) int {
	fmt.Fprintln(w, "goclient:", msg)
	fmt.Fprintln(w, "usage: goclient [whoami | loop N INTERVAL | imds-raw token TTL | imds-raw get PATH [TOKEN] | imds-raw v1 PATH | imds-raw xff PATH]")
	return 2
}

// recorder remembers the credentials the SDK last used for signing, so the
// printed key prefix and expiry are those of the call itself (not of a
// second Retrieve that could trigger its own refresh).
type recorder struct {
	inner aws.CredentialsProvider
	mu    sync.Mutex
	last  aws.Credentials
}

func (r *recorder) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := r.inner.Retrieve(ctx)
	if err == nil {
		r.mu.Lock()
		r.last = c
		r.mu.Unlock()
	}
	return c, err
}

func (r *recorder) take() aws.Credentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.last
	r.last = aws.Credentials{}
	return c
}

// loop makes n GetCallerIdentity calls with one aws.Config, so the SDK's
// credential cache decides when to go back to IMDS, as in a long-lived
// workload.
func loop(ctx context.Context, n int, interval time.Duration, stdout io.Writer) int {
	enc := json.NewEncoder(stdout)
	lctx, cancel := context.WithTimeout(ctx, callTimeout)
	cfg, err := config.LoadDefaultConfig(lctx)
	cancel()
	if err != nil {
		_ = enc.Encode(result{SDK: "go", Attempt: 1, Error: "load config: " + err.Error()})
		return 1
	}
	// Wrapping the cache (not the provider) keeps the SDK's caching and
	// refresh logic exactly as LoadDefaultConfig built it.
	rec := &recorder{inner: cfg.Credentials}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.Credentials = rec
		if ep := os.Getenv("STS_ENDPOINT"); ep != "" {
			o.BaseEndpoint = aws.String(ep)
		}
	})
	code := 0
	for i := 1; i <= n; i++ {
		if i > 1 {
			time.Sleep(interval)
		}
		res := result{SDK: "go", Attempt: i}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		out, err := client.GetCallerIdentity(cctx, &sts.GetCallerIdentityInput{})
		cancel()
		c := rec.take()
		res.KeyPrefix = prefix(c.AccessKeyID, 8)
		if c.CanExpire {
			res.Expiration = c.Expires.UTC().Format(time.RFC3339)
		}
		if err != nil {
			res.Error = err.Error()
			code = 1
		} else {
			res.ARN = aws.ToString(out.Arn)
		}
		_ = enc.Encode(res)
	}
	return code
}

func prefix(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// rawResult is what imds-raw prints for GETs and failed PUTs.
type rawResult struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error,omitempty"`
}

const (
	tokenPath   = "/latest/api/token"
	ttlHeader   = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	tokenHeader = "X-Aws-Ec2-Metadata-Token"
)

// imdsRaw speaks the IMDS protocol by hand, for scenarios the SDKs would
// never produce (tokenless GETs, X-Forwarded-For, odd TTLs).
func imdsRaw(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		return usage(stderr, "imds-raw needs a subcommand and an argument")
	}
	base := strings.TrimSuffix(os.Getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT"), "/")
	if base == "" {
		base = "http://169.254.169.254"
	}
	hc := &http.Client{Timeout: callTimeout}
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false) // print "<redacted>" as is
	sub, arg := args[0], args[1]
	var (
		res rawResult
		err error
	)
	switch sub {
	case "token":
		var tok string
		res, tok, err = putToken(ctx, hc, base, arg, nil)
		if err == nil && res.Status == http.StatusOK {
			fmt.Fprintln(stdout, tok)
			return 0
		}
	case "get":
		tok := ""
		if len(args) > 2 {
			tok = args[2]
		} else if res, tok, err = putToken(ctx, hc, base, "60", nil); err != nil || res.Status != http.StatusOK {
			break
		}
		res, err = get(ctx, hc, base, arg, http.Header{tokenHeader: {tok}})
	case "v1":
		res, err = get(ctx, hc, base, arg, nil)
	case "xff":
		xff := http.Header{"X-Forwarded-For": {"203.0.113.7"}}
		if arg == tokenPath {
			res, _, err = putToken(ctx, hc, base, "60", xff)
			break
		}
		var tok string
		if res, tok, err = putToken(ctx, hc, base, "60", nil); err != nil || res.Status != http.StatusOK {
			break
		}
		xff.Set(tokenHeader, tok)
		res, err = get(ctx, hc, base, arg, xff)
	default:
		return usage(stderr, "unknown imds-raw subcommand "+sub)
	}
	if err != nil {
		res.Error = err.Error()
	}
	_ = enc.Encode(res)
	if err != nil || res.Status < 200 || res.Status > 299 {
		return 1
	}
	return 0
}

func putToken(ctx context.Context, hc *http.Client, base, ttl string, extra http.Header) (rawResult, string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, base+tokenPath, nil)
	if err != nil {
		return rawResult{}, "", fmt.Errorf("put token: %w", err)
	}
	req.Header.Set(ttlHeader, ttl)
	for k, v := range extra {
		req.Header[k] = v
	}
	status, body, err := do(hc, req)
	if err != nil {
		return rawResult{}, "", fmt.Errorf("put token: %w", err)
	}
	if status != http.StatusOK {
		return rawResult{Status: status, Body: clean(body)}, "", nil
	}
	return rawResult{Status: status}, strings.TrimSpace(string(body)), nil
}

func get(ctx context.Context, hc *http.Client, base, path string, h http.Header) (rawResult, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return rawResult{}, fmt.Errorf("get %s: %w", path, err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	status, body, err := do(hc, req)
	if err != nil {
		return rawResult{}, fmt.Errorf("get %s: %w", path, err)
	}
	return rawResult{Status: status, Body: clean(body)}, nil
}

func do(hc *http.Client, req *http.Request) (int, []byte, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	// Read a little more than printed so redaction sees whole values.
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil && !errors.Is(err, io.EOF) {
		return resp.StatusCode, nil, err
	}
	return resp.StatusCode, body, nil
}

// clean redacts secrets first and truncates second, so a cut can never
// expose the start of a secret. The pattern matches the JSON members whose
// values must never be printed.
func clean(body []byte) string {
	secretField := regexp.MustCompile(`("(?:SecretAccessKey|Token)"\s*:\s*)"(?:[^"\\]|\\.)*"`)
	b := secretField.ReplaceAll(body, []byte(`$1"<redacted>"`))
	if len(b) > maxBody {
		b = append(bytes.Clone(b[:maxBody]), "...(truncated)"...)
	}
	return string(b)
}
