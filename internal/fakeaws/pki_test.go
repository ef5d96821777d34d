package fakeaws_test

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/per-docker-roles/per-docker-roles/internal/fakeaws"
)

func TestNewPKI(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")
	p, err := fakeaws.NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p.CACertPath)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s holds no PEM certificate", p.CACertPath)
	}
	if p.CertPath != p.Leaf.CertPath || p.KeyPath != p.Leaf.KeyPath {
		t.Errorf("CertPath/KeyPath %s %s are not the default leaf's", p.CertPath, p.KeyPath)
	}
	tests := []struct {
		name string
		leaf *fakeaws.Leaf
		ok   func(any) bool
	}{
		{"ecdsa", p.Leaf, func(k any) bool { _, ok := k.(*ecdsa.PublicKey); return ok }},
		{"rsa", p.RSALeaf, func(k any) bool { _, ok := k.(*rsa.PublicKey); return ok }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The files on disk must be a matching pair the helper can load.
			pair, err := tls.LoadX509KeyPair(tc.leaf.CertPath, tc.leaf.KeyPath)
			if err != nil {
				t.Fatalf("load pair: %v", err)
			}
			cert, err := x509.ParseCertificate(pair.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if !tc.ok(cert.PublicKey) {
				t.Errorf("public key type %T", cert.PublicKey)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("leaf does not chain to the CA file: %v", err)
			}
			keyPEM, _ := os.ReadFile(tc.leaf.KeyPath)
			if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
				t.Errorf("key file is not PKCS#8 PEM")
			}
			if st, err := os.Stat(tc.leaf.KeyPath); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, %v; want 0600", st.Mode().Perm(), err)
			}
		})
	}
	other, err := fakeaws.NewPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Leaf.Cert.Verify(x509.VerifyOptions{Roots: p.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Error("a leaf of another PKI verified against this CA")
	}
	if p.Leaf.Cert.SerialNumber.Cmp(p.RSALeaf.Cert.SerialNumber) == 0 {
		t.Error("leaf serials collide")
	}
}
