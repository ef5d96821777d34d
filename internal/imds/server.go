package imds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/per-docker-roles/per-docker-roles/internal/identity"
	"github.com/per-docker-roles/per-docker-roles/internal/roles"
	"github.com/per-docker-roles/per-docker-roles/internal/token"
)

// HTTP server limits. IMDS requests are a request line and a handful of
// short headers; anything bigger is not an SDK.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second // covers one STS round trip with retries
	idleTimeout       = 90 * time.Second
	maxHeaderBytes    = 8 << 10
)

// Server is the IMDS HTTP surface. One Server may serve several listeners.
type Server struct {
	cfg     Config
	ident   Identifier
	broker  Broker
	now     func() time.Time
	log     *zap.Logger
	tokens  *token.Store
	policy  *roles.Policy
	started time.Time // iam/info LastUpdated

	baseParsed atomic.Pointer[parsedBase]
	metrics    *metrics

	srv        *http.Server
	conns      chan struct{} // one slot per open connection (Config.MaxConns)
	baseCtx    context.Context
	cancelBase context.CancelFunc
}

// New builds a Server. reg receives the server's and the token store's
// metrics.
func New(cfg Config, deps Deps, log *zap.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if deps.Identifier == nil || deps.Broker == nil {
		return nil, errors.New("imds: Deps.Identifier and Deps.Broker are required")
	}
	if log == nil {
		log = zap.NewNop()
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	policy, err := roles.New(cfg.Roles)
	if err != nil {
		return nil, fmt.Errorf("imds: %w", err)
	}
	tokens := token.New(cfg.Tokens, now)
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if err := tokens.Register(reg); err != nil {
		return nil, fmt.Errorf("imds: %w", err)
	}
	s := &Server{
		conns:   make(chan struct{}, cfg.MaxConns),
		cfg:     cfg,
		ident:   deps.Identifier,
		broker:  deps.Broker,
		now:     now,
		log:     log,
		tokens:  tokens,
		policy:  policy,
		started: now(),
		metrics: m,
	}
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return s.baseCtx },
		ConnContext:       s.connContext,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	return s, nil
}

// Serve accepts connections on ln until ctx ends (then shuts the whole
// server down gracefully, waiting up to Config.ShutdownTimeout) or
// Shutdown is called. It returns nil on a clean stop.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	drained := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(drained)
		sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
		defer cancel()
		if err := s.Shutdown(sctx); err != nil {
			s.log.Warn("imds shutdown", zap.Error(err))
		}
	})
	err := s.srv.Serve(&limitListener{Listener: ln, s: s})
	if !stop() {
		<-drained // our own shutdown is under way: return once it is done
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serve imds on %s: %w", ln.Addr(), err)
}

// Shutdown stops every listener and waits for in-flight requests until
// ctx ends; then it cancels what is left (broker calls included) and
// closes the connections.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	s.cancelBase()
	if err != nil {
		_ = s.srv.Close()
		return fmt.Errorf("imds shutdown: %w", err)
	}
	return nil
}

// connState is the per-connection identity. ConnContext starts its
// resolution at accept time, on its own goroutine: the http.Server calls
// ConnContext on its accept loop, and an Identify that has to ask dockerd
// (a container seen before its start event) must not stall every other
// caller's accept. Starting at accept rather than at the first request
// also consumes the kernel's redirect record while it is fresh.
type connState struct {
	peer, local netip.AddrPort

	done   chan struct{} // closed once caller and err are set
	caller identity.Caller
	err    error
}

type connKey struct{}

func (s *Server) connContext(ctx context.Context, c net.Conn) context.Context {
	st := &connState{peer: addrPort(c.RemoteAddr()), local: addrPort(c.LocalAddr()), done: make(chan struct{})}
	// Bounded by IdentifyTimeout, and by ctx (the server's base context,
	// cancelled at the end of Shutdown).
	go s.resolve(ctx, st)
	return context.WithValue(ctx, connKey{}, st)
}

func (s *Server) resolve(ctx context.Context, st *connState) {
	defer close(st.done)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.IdentifyTimeout)
	defer cancel()
	st.caller, st.err = s.ident.Identify(ctx, st.peer, st.local)
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// identify returns the caller of the request's connection, waiting for
// the resolution ConnContext started.
func (s *Server) identify(r *http.Request) (*connState, error) {
	st, ok := r.Context().Value(connKey{}).(*connState)
	if !ok {
		// A handler driven without our http.Server (tests, embedding):
		// identify from the request's RemoteAddr, for this request only.
		ap, _ := netip.ParseAddrPort(r.RemoteAddr)
		st = &connState{peer: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), done: make(chan struct{})}
		s.resolve(r.Context(), st)
	}
	select {
	case <-st.done:
		return st, st.err
	case <-r.Context().Done():
		err := fmt.Errorf("identify %s: %w", st.peer, r.Context().Err())
		return &connState{peer: st.peer, local: st.local, err: err}, err
	}
}

// limitListener closes connections beyond the server's MaxConns as soon as
// they are accepted.
type limitListener struct {
	net.Listener
	s *Server
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.s.conns <- struct{}{}:
			return &limitedConn{Conn: c, release: func() { <-l.s.conns }}, nil
		default:
			l.s.metrics.connsRejected.Inc()
			_ = c.Close()
		}
	}
}

// limitedConn frees its slot once, on the first Close.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
