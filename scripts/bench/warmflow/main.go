// Command warmflow measures the warm credential flow an SDK performs
// (token PUT, role list GET, credentials GET on one keep-alive connection)
// against aws_signing_helper serve itself and against per-docker-roles in
// front of it, in one run with interleaved rounds, and prints the ratio.
// Everything listens on loopback. Run through scripts/bench/run.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

func main() {
	daemon := flag.String("daemon", "bin/per-docker-roles", "per-docker-roles binary")
	flows := flag.Int("flows", 2000, "flows per target (bounded: at most 100000)")
	rounds := flag.Int("rounds", 10, "interleaved rounds")
	flag.Parse()
	if *flows < 1 || *flows > 100000 || *rounds < 1 || *rounds > *flows {
		fmt.Fprintln(os.Stderr, "warmflow: --flows must be 1..100000 and --rounds 1..flows")
		os.Exit(2)
	}
	if err := run(*daemon, *flows, *rounds); err != nil {
		fmt.Fprintf(os.Stderr, "warmflow: %v\n", err)
		os.Exit(1)
	}
}

func run(daemon string, flows, rounds int) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "pdr-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	up, err := testenv.NewUpstream(ctx, testenv.UpstreamConfig{PKIDir: work, StartHelper: true}, zap.NewNop())
	if err != nil {
		return err
	}
	defer up.Close()

	port, admin := freePort(), freePort()
	proxy := "http://127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(daemon, "--redirect=off", "--identity=ip", "--host-callers=base",
		"--listen", "127.0.0.1:"+strconv.Itoa(port), "--admin-listen", "127.0.0.1:"+strconv.Itoa(admin),
		"--upstream", up.HelperURL, "--sts-endpoint", up.STSURL, "--log-level", "error")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	if err := waitReady(fmt.Sprintf("http://127.0.0.1:%d/readyz", admin)); err != nil {
		return err
	}

	targets := []struct{ name, base string }{{"aws_signing_helper serve", up.HelperURL}, {"per-docker-roles", proxy}}
	clients := make([]*http.Client, len(targets))
	for i := range clients {
		clients[i] = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 5 * time.Second}
		for j := 0; j < 50; j++ { // warm up caches and connections
			if err := flow(clients[i], targets[i].base); err != nil {
				return fmt.Errorf("%s: %w", targets[i].name, err)
			}
		}
	}
	samples := make([][]time.Duration, len(targets))
	per := flows / rounds
	for r := 0; r < rounds; r++ {
		for i, tg := range targets {
			for n := 0; n < per; n++ {
				start := time.Now()
				if err := flow(clients[i], tg.base); err != nil {
					return fmt.Errorf("%s: %w", tg.name, err)
				}
				samples[i] = append(samples[i], time.Since(start))
			}
		}
	}
	med := make([]time.Duration, len(targets))
	for i, tg := range targets {
		slices.Sort(samples[i])
		s := samples[i]
		med[i] = s[len(s)/2]
		fmt.Printf("%-26s %6d flows  median %7.1f us  p90 %7.1f us  p99 %7.1f us\n", tg.name, len(s),
			us(med[i]), us(s[len(s)*9/10]), us(s[len(s)*99/100]))
	}
	fmt.Printf("ratio per-docker-roles / aws_signing_helper (median warm flow) = %.2f (target <= 1.25)\n",
		float64(med[1])/float64(med[0]))
	return nil
}

// flow is what an SDK does to refresh: token, role name, credentials.
func flow(c *http.Client, base string) error {
	req, _ := http.NewRequest(http.MethodPut, base+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
	tok, err := do(c, req)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	req, _ = http.NewRequest(http.MethodGet, base+"/latest/meta-data/iam/security-credentials/", nil)
	req.Header.Set("X-aws-ec2-metadata-token", tok)
	role, err := do(c, req)
	if err != nil {
		return fmt.Errorf("role list: %w", err)
	}
	req, _ = http.NewRequest(http.MethodGet, base+"/latest/meta-data/iam/security-credentials/"+strings.TrimSpace(role), nil)
	req.Header.Set("X-aws-ec2-metadata-token", tok)
	body, err := do(c, req)
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	if !strings.Contains(body, `"AccessKeyId"`) {
		return fmt.Errorf("credentials: unexpected body %.80q", body)
	}
	return nil
}

func do(c *http.Client, req *http.Request) (string, error) {
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, b)
	}
	return string(b), nil
}

func waitReady(url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("daemon not ready at %s", url)
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
