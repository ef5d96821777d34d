// Package creds is the credential broker: it fetches the host's base
// credentials from the upstream IMDS-shaped endpoint (aws_signing_helper
// serve, or EC2 IMDS), assumes container roles with STS, and caches the
// results per (role, external id, session name).
package creds

import (
	"encoding/json"
	"errors"
	"sync"
	"time"
)

// Credentials is one immutable set of AWS credentials. The IMDS JSON forms
// are serialized once per value, not per request.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	LastUpdated     time.Time
	AccountID       string
	RoleARN         string // the role these credentials belong to

	once     sync.Once
	legacy   []byte
	extended []byte
}

// imdsCredential is the RefreshableCred document served by EC2 IMDS.
type imdsCredential struct {
	Code            string `json:"Code"`
	LastUpdated     string `json:"LastUpdated"`
	Type            string `json:"Type"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
	AccountID       string `json:"AccountId,omitempty"`
}

// IMDSJSON returns the document for security-credentials/<role>; with
// extended it also carries AccountId (security-credentials-extended/).
// The returned slice is shared: callers must not modify it.
func (c *Credentials) IMDSJSON(extended bool) []byte {
	c.once.Do(func() {
		doc := imdsCredential{
			Code:            "Success",
			LastUpdated:     c.LastUpdated.UTC().Format(time.RFC3339),
			Type:            "AWS-HMAC",
			AccessKeyID:     c.AccessKeyID,
			SecretAccessKey: c.SecretAccessKey,
			Token:           c.SessionToken,
			Expiration:      c.Expiration.UTC().Format(time.RFC3339),
		}
		c.legacy = mustJSON(doc)
		doc.AccountID = c.AccountID
		c.extended = mustJSON(doc)
	})
	if extended {
		return c.extended
	}
	return c.legacy
}

func mustJSON(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err) // only strings: cannot fail
	}
	return b
}

// Valid reports whether the credentials are complete and unexpired at now.
func (c *Credentials) Valid(now time.Time) bool {
	return c != nil && c.AccessKeyID != "" && c.SecretAccessKey != "" && now.Before(c.Expiration)
}

// Request names the role a container needs.
type Request struct {
	RoleARN     string
	ExternalID  string // empty when not labelled
	SessionName string // RoleSessionName, already sanitized
}

var (
	// ErrUpstream means the base credentials could not be obtained (the
	// helper is down, answered garbage, or handed out empty/expired keys).
	ErrUpstream = errors.New("upstream credentials unavailable")
	// ErrSTS means AssumeRole failed and no still-valid credential is cached.
	ErrSTS = errors.New("sts assume role failed")
)
