package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"

	"github.com/per-docker-roles/per-docker-roles/internal/admin"
	"github.com/per-docker-roles/per-docker-roles/internal/config"
	"github.com/per-docker-roles/per-docker-roles/internal/creds"
	"github.com/per-docker-roles/per-docker-roles/internal/docker"
	"github.com/per-docker-roles/per-docker-roles/internal/identity"
	"github.com/per-docker-roles/per-docker-roles/internal/imds"
	"github.com/per-docker-roles/per-docker-roles/internal/prefetch"
	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
	"github.com/per-docker-roles/per-docker-roles/internal/roles"
	"github.com/per-docker-roles/per-docker-roles/internal/sdnotify"
)

// run builds every component from cfg and serves until ctx ends.
func run(ctx context.Context, cfg config.Config, stderr io.Writer) error {
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // stderr sync errors are not actionable
	log.Info("starting", zap.String("version", version), zap.String("commit", commit),
		zap.String("redirect", cfg.Redirect), zap.String("identity", cfg.IdentityMode()),
		zap.String("upstream", cfg.Upstream))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	policy, err := roles.New(roles.Config{RoleLabel: cfg.RoleLabel, ExternalIDLabel: cfg.ExternalIDLabel, Allowed: cfg.AllowedRoles})
	if err != nil {
		return fmt.Errorf("--allowed-roles: %w", err)
	}
	broker, err := creds.New(creds.Config{
		Upstream:        cfg.UpstreamURL(),
		Region:          cfg.Region,
		STSEndpoint:     cfg.STSEndpoint,
		SessionDuration: cfg.SessionDuration,
	}, log.Named("creds"), reg)
	if err != nil {
		return fmt.Errorf("credential broker: %w", err)
	}

	pf := prefetch.New(policy, broker, log.Named("prefetch"))
	index, err := docker.New(docker.Config{Host: cfg.DockerHost, OnStart: pf.ContainerStarted}, log.Named("docker"), reg)
	if err != nil {
		return fmt.Errorf("docker index: %w", err)
	}
	defer index.Close()
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = index.Ping(pingCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("cannot reach the Docker Engine API (--docker-host %q): %w", cfg.DockerHost, err)
	}

	// Bind the loopback proxy port before touching the kernel, so a port in
	// use fails before anything is attached.
	var listeners []net.Listener
	defer func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}()
	listen := func(addr string) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("proxy listen %s: %w", addr, err)
		}
		listeners = append(listeners, ln)
		return nil
	}
	listenAddrs := cfg.ListenAddrs()
	if cfg.Redirect == "ebpf" {
		listenAddrs = append([]string{net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.ProxyPort))}, listenAddrs...)
	}
	for _, a := range dedupe(listenAddrs) {
		if err := listen(a); err != nil {
			return err
		}
	}

	var strategy identity.Strategy
	var redir *redirect.Redirector
	if cfg.Redirect == "ebpf" {
		rc := redirectConfig(cfg)
		// IPv6 host callers (fd00:ec2::254) go to [::1]; where the host
		// has no IPv6 loopback they stay refused.
		if err := listen(rc.HostTarget6.String()); err != nil {
			log.Warn("no IPv6 loopback: IPv6 metadata connections from the host namespace will be refused", zap.Error(err))
			rc.HostTarget6 = netip.AddrPort{}
		}
		redir, err = redirect.New(rc, log.Named("redirect"), reg)
		if err != nil {
			return fmt.Errorf("eBPF redirect (use --redirect=off to run without it): %w", err)
		}
		defer redir.Close()
		for _, a := range redir.Listen() {
			if a.Addr().IsLoopback() {
				continue // bound above
			}
			if err := listen(a.String()); err != nil {
				return err
			}
		}
	}
	switch cfg.IdentityMode() {
	case "cgroup":
		strategy = identity.NewCgroup(redir, index)
	default:
		strategy = identity.NewIP(index, identity.IPConfig{})
	}

	proxy, err := imds.New(imds.Config{
		IMDSv1:      cfg.IMDSv1 == "allow",
		HostCallers: cfg.HostCallers,
		Roles:       roles.Config{RoleLabel: cfg.RoleLabel, ExternalIDLabel: cfg.ExternalIDLabel, Allowed: cfg.AllowedRoles},
	}, imds.Deps{Identifier: strategy, Broker: baseARNBroker{broker}}, log.Named("imds"), reg)
	if err != nil {
		return fmt.Errorf("imds server: %w", err)
	}

	checks := map[string]admin.Check{
		"docker index": func(context.Context) error {
			if !index.Synced() {
				return errors.New("not synced with dockerd yet")
			}
			return nil
		},
		"upstream": broker.UpstreamReady,
	}
	if redir != nil {
		checks["redirect"] = func(context.Context) error {
			st, err := redir.Status()
			if err != nil {
				return err
			}
			if !st.Configured() {
				return errors.New("no proxy target set")
			}
			return nil
		}
	}
	adm := admin.New(reg, checks)
	var admLn net.Listener
	if cfg.AdminListen != "" {
		admLn, err = net.Listen("tcp", cfg.AdminListen)
		if err != nil {
			return fmt.Errorf("admin listen %s: %w", cfg.AdminListen, err)
		}
	}

	notifier, err := sdnotify.New(os.Getenv("NOTIFY_SOCKET"))
	if err != nil {
		log.Warn("sd_notify disabled", zap.Error(err))
		notifier, _ = sdnotify.New("")
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return index.Run(gctx) })
	g.Go(func() error { return broker.Run(gctx) })
	g.Go(func() error { return pf.Run(gctx) })
	for _, ln := range listeners {
		g.Go(func() error { return proxy.Serve(gctx, ln) })
		log.Info("proxy listening", zap.Stringer("addr", ln.Addr()))
	}
	listeners = nil // Serve owns them now
	if admLn != nil {
		g.Go(func() error { return adm.Serve(admLn) })
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return adm.Shutdown(sctx)
		})
		log.Info("admin listening", zap.Stringer("addr", admLn.Addr()))
	}
	g.Go(func() error {
		if err := index.WaitSynced(gctx); err != nil {
			return nil // shutting down before the first sync
		}
		log.Info("ready", zap.Int("containers", index.Len()))
		if err := notifier.ReadyStatus(fmt.Sprintf("serving %d containers", index.Len())); err != nil {
			log.Warn("sd_notify ready", zap.Error(err))
		}
		return nil
	})

	err = g.Wait()
	_ = notifier.Stopping()
	if errors.Is(err, context.Canceled) || (err == nil && ctx.Err() != nil) {
		log.Info("stopped")
		return nil
	}
	return err
}

// redirectConfig maps the daemon flags to the kernel side.
func redirectConfig(cfg config.Config) redirect.Config {
	port := uint16(cfg.ProxyPort)
	rc := redirect.Config{
		CgroupPath:  cfg.CgroupPath,
		PinDir:      cfg.BPFPinDir,
		HostTarget:  netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
		NSTarget:    netip.AddrPortFrom(netip.MustParseAddr(cfg.NSAddr), port),
		HostTarget6: netip.AddrPortFrom(netip.IPv6Loopback(), port),
	}
	rc.GuardAddrs = guardAddrs(cfg.UpstreamURL())
	return rc
}

// guardAddrs are the upstream addresses only the daemon may reach: a
// loopback helper (aws_signing_helper serve) would otherwise hand the base
// role to any host-network container. An EC2 upstream (169.254.169.254) is
// redirected for everyone but the daemon anyway.
func guardAddrs(u *url.URL) []netip.AddrPort {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return []netip.AddrPort{}
	}
	var addrs []netip.Addr
	if u.Hostname() == "localhost" {
		addrs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	} else if a, err := netip.ParseAddr(u.Hostname()); err == nil && a.IsLoopback() {
		addrs = []netip.Addr{a}
	}
	out := []netip.AddrPort{}
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(a, uint16(p)))
	}
	return out
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func newLogger(cfg config.Config, stderr io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(cfg.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.LogFormat == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.AddSync(stderr), level)
	return zap.New(core), nil
}

// baseARNBroker gives the IMDS server the base role ARN it resolves bare
// role names and host callers against.
type baseARNBroker struct{ *creds.Broker }

func (b baseARNBroker) BaseARN(ctx context.Context) (string, error) {
	id, err := b.Identity(ctx)
	if err != nil {
		return "", err
	}
	return id.ARN, nil
}
