// Package fakeaws holds loopback-only fakes of the AWS services the proxy
// talks to: IAM Roles Anywhere CreateSession (for the real
// aws_signing_helper) and STS (AssumeRole, GetCallerIdentity). Both verify
// signatures with the credentials this package issued, so a test cannot pass
// with forged or mixed-up keys.
package fakeaws

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"sync"
	"time"
)

// Issued is one credential set the fakes handed out.
type Issued struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time

	// PrincipalARN is what GetCallerIdentity returns for these keys, e.g.
	// arn:aws:sts::123456789012:assumed-role/base/session.
	PrincipalARN string
	// RoleARN is the IAM role the session belongs to.
	RoleARN string
	Account string
	// Chained is true for role sessions (Roles Anywhere or AssumeRole): STS
	// caps an AssumeRole made with them at one hour.
	Chained bool
}

// Store remembers every credential issued by the fakes, so STS can verify
// SigV4 signatures and answer GetCallerIdentity. Safe for concurrent use.
type Store struct {
	mu   sync.Mutex
	keys map[string]Issued
	now  func() time.Time
}

// NewStore returns an empty store; now may be nil for time.Now.
func NewStore(now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{keys: make(map[string]Issued), now: now}
}

// Now is the store's clock.
func (s *Store) Now() time.Time { return s.now() }

// Issue mints a new credential set for a role session and remembers it.
func (s *Store) Issue(account, roleARN, principalARN string, d time.Duration, chained bool) Issued {
	is := Issued{
		AccessKeyID:     "ASIA" + randomID(16),
		SecretAccessKey: randomSecret(30),
		SessionToken:    "FQoG" + randomSecret(96),
		Expiration:      s.now().Add(d).UTC().Truncate(time.Second),
		PrincipalARN:    principalARN,
		RoleARN:         roleARN,
		Account:         account,
		Chained:         chained,
	}
	s.mu.Lock()
	s.keys[is.AccessKeyID] = is
	s.mu.Unlock()
	return is
}

// Lookup returns the credentials with that access key id, if issued.
func (s *Store) Lookup(accessKeyID string) (Issued, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	is, ok := s.keys[accessKeyID]
	return is, ok
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base32.StdEncoding.EncodeToString(b)[:n]
}

func randomSecret(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawStdEncoding.EncodeToString(b)[:n]
}
