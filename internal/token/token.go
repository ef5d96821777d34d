// Package token mints and checks the proxy's own IMDSv2 session tokens.
//
// Tokens are never forwarded upstream: the upstream helper keeps at most 256
// live tokens (DESIGN.md §2), so the proxy mints its own, binds each to the
// caller it was minted for, and keeps only a hash of it. The table is
// bounded in total and per caller, so a flood of token PUTs cannot grow
// memory: the earliest-expiring tokens are evicted first (which are the
// expired ones, when there are any).
package token

import (
	"container/heap"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for Config.
const (
	DefaultMaxTokens    = 65536
	DefaultMaxPerCaller = 64
)

// rawLen is the number of random bytes in a token; encodedLen its length
// in unpadded base64url.
const (
	rawLen     = 32
	encodedLen = 43
)

var (
	// ErrMissing means no token was presented.
	ErrMissing = errors.New("token missing")
	// ErrInvalid means the token is malformed or was never minted here (or
	// was evicted).
	ErrInvalid = errors.New("token invalid")
	// ErrExpired means the token was minted here but its TTL has passed.
	ErrExpired = errors.New("token expired")
	// ErrForeign means the token was minted for another caller.
	ErrForeign = errors.New("token bound to another caller")
	// ErrTTL means Mint was asked for a non-positive TTL.
	ErrTTL = errors.New("token ttl must be positive")
)

// Config bounds the token table. Zero values take the defaults.
type Config struct {
	MaxTokens    int // live tokens in total (default 65536)
	MaxPerCaller int // live tokens per caller key (default 64, at most MaxTokens)
}

func (c Config) withDefaults() Config {
	if c.MaxTokens <= 0 {
		c.MaxTokens = DefaultMaxTokens
	}
	if c.MaxPerCaller <= 0 {
		c.MaxPerCaller = DefaultMaxPerCaller
	}
	if c.MaxPerCaller > c.MaxTokens {
		c.MaxPerCaller = c.MaxTokens
	}
	return c
}

type entry struct {
	hash      [sha256.Size]byte
	caller    string
	expiry    time.Time
	heapIdx   int // position in Store.byExpiry
	callerIdx int // position in Store.byCaller[caller]
}

// expiryHeap is a min-heap of entries by expiry; it keeps heapIdx current
// so any entry can be removed in O(log n).
type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expiry.Before(h[j].expiry) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*entry)
	e.heapIdx = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.heapIdx = -1
	return e
}

// Store holds the live tokens. It is safe for concurrent use.
type Store struct {
	cfg Config
	now func() time.Time

	mu       sync.Mutex
	byHash   map[[sha256.Size]byte]*entry
	byExpiry expiryHeap
	byCaller map[string][]*entry

	evicted prometheus.Counter // nil until Register
}

// New returns an empty Store. now is the clock (time.Now when nil).
func New(cfg Config, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{
		cfg:      cfg.withDefaults(),
		now:      now,
		byHash:   make(map[[sha256.Size]byte]*entry),
		byCaller: make(map[string][]*entry),
	}
}

// Register exposes the store's metrics on reg: pdr_imds_tokens_live (gauge)
// and pdr_imds_tokens_evicted_total (live tokens dropped to make room).
func (s *Store) Register(reg prometheus.Registerer) error {
	evicted := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pdr_imds_tokens_evicted_total",
		Help: "IMDS tokens evicted before expiry because the token table or a caller's share of it was full.",
	})
	live := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pdr_imds_tokens_live",
		Help: "IMDS tokens currently held (expired ones are dropped lazily).",
	}, func() float64 { return float64(s.Len()) })
	for _, c := range []prometheus.Collector{evicted, live} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register token metrics: %w", err)
		}
	}
	s.mu.Lock()
	s.evicted = evicted
	s.mu.Unlock()
	return nil
}

// Len returns the number of tokens held, including expired ones not yet
// dropped.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byHash)
}

// Mint returns a new token bound to callerKey, valid for ttl.
func (s *Store) Mint(callerKey string, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", fmt.Errorf("mint token for %q with ttl %s: %w", callerKey, ttl, ErrTTL)
	}
	var raw [rawLen]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("mint token: read random: %w", err)
	}
	tok := base64.RawURLEncoding.EncodeToString(raw[:])
	now := s.now()
	e := &entry{hash: sha256.Sum256([]byte(tok)), caller: callerKey, expiry: now.Add(ttl)}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpiredLocked(now)
	if list := s.byCaller[callerKey]; len(list) >= s.cfg.MaxPerCaller {
		s.removeLocked(earliest(list))
		s.countEvictionLocked()
	}
	if len(s.byHash) >= s.cfg.MaxTokens {
		s.removeLocked(s.byExpiry[0])
		s.countEvictionLocked()
	}
	s.byHash[e.hash] = e
	heap.Push(&s.byExpiry, e)
	e.callerIdx = len(s.byCaller[callerKey])
	s.byCaller[callerKey] = append(s.byCaller[callerKey], e)
	return tok, nil
}

// Check reports whether tok is a live token minted for callerKey: nil, or
// one of ErrMissing, ErrInvalid, ErrExpired, ErrForeign.
func (s *Store) Check(tok, callerKey string) error {
	if tok == "" {
		return ErrMissing
	}
	if len(tok) != encodedLen {
		return ErrInvalid
	}
	if _, err := base64.RawURLEncoding.DecodeString(tok); err != nil {
		return ErrInvalid
	}
	h := sha256.Sum256([]byte(tok))
	now := s.now()

	s.mu.Lock()
	defer s.mu.Unlock()
	// The table is keyed by the hash, so lookup timing says nothing about
	// the token itself; the compare below is belt and braces.
	e, ok := s.byHash[h]
	if !ok || subtle.ConstantTimeCompare(e.hash[:], h[:]) != 1 {
		return ErrInvalid
	}
	if subtle.ConstantTimeCompare([]byte(e.caller), []byte(callerKey)) != 1 {
		return ErrForeign
	}
	if !now.Before(e.expiry) {
		s.removeLocked(e)
		return ErrExpired
	}
	return nil
}

// dropExpiredLocked removes every expired token. Amortized O(log n) per
// token, since each token is removed once.
func (s *Store) dropExpiredLocked(now time.Time) {
	for len(s.byExpiry) > 0 && !now.Before(s.byExpiry[0].expiry) {
		s.removeLocked(s.byExpiry[0])
	}
}

func (s *Store) countEvictionLocked() {
	if s.evicted != nil {
		s.evicted.Inc()
	}
}

func (s *Store) removeLocked(e *entry) {
	delete(s.byHash, e.hash)
	if e.heapIdx >= 0 {
		heap.Remove(&s.byExpiry, e.heapIdx)
	}
	list := s.byCaller[e.caller]
	last := len(list) - 1
	list[e.callerIdx] = list[last]
	list[e.callerIdx].callerIdx = e.callerIdx
	list[last] = nil
	if last == 0 {
		delete(s.byCaller, e.caller)
	} else {
		s.byCaller[e.caller] = list[:last]
	}
}

// earliest returns the entry that expires first. The list is at most
// MaxPerCaller long, so a scan is cheaper than another heap.
func earliest(list []*entry) *entry {
	first := list[0]
	for _, e := range list[1:] {
		if e.expiry.Before(first.expiry) {
			first = e
		}
	}
	return first
}

// ShortHash returns a short, non-reversible tag for tok, safe to log.
func ShortHash(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return fmt.Sprintf("%x", h[:4])
}
