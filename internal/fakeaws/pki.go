package fakeaws

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// KeyType selects the algorithm of a generated key.
type KeyType int

const (
	// ECDSAP256 makes the helper sign with AWS4-X509-ECDSA-SHA256.
	ECDSAP256 KeyType = iota
	// RSA2048 makes the helper sign with AWS4-X509-RSA-SHA256.
	RSA2048
)

func (k KeyType) String() string {
	switch k {
	case ECDSAP256:
		return "ecdsa-p256"
	case RSA2048:
		return "rsa-2048"
	}
	return fmt.Sprintf("KeyType(%d)", int(k))
}

// ErrUnknownKeyType is returned for a KeyType this package cannot generate.
var ErrUnknownKeyType = errors.New("unknown key type")

// Leaf is an end-entity certificate with its key, as PEM files on disk for
// aws_signing_helper (--certificate, --private-key).
type Leaf struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertPath string
	KeyPath  string
}

// PKI is a throw-away certificate authority made at test time, so no key
// material is ever committed. The default leaf is ECDSA P-256; RSA is the
// other algorithm the helper supports.
type PKI struct {
	Dir        string
	CA         *x509.Certificate
	CAKey      crypto.Signer
	CACertPath string

	// CertPath and KeyPath are the default (ECDSA) leaf's files.
	CertPath string
	KeyPath  string
	Leaf     *Leaf
	RSALeaf  *Leaf
}

// NewPKI creates dir (if needed) and writes ca.crt, leaf.crt/leaf.key
// (ECDSA P-256) and leaf-rsa.crt/leaf-rsa.key into it.
func NewPKI(dir string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki dir %s: %w", dir, err)
	}
	caKey, err := newKey(ECDSAP256)
	if err != nil {
		return nil, fmt.Errorf("generate ca key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "per-docker-roles test CA", Organization: []string{"per-docker-roles tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("create ca certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	p := &PKI{Dir: dir, CA: ca, CAKey: caKey, CACertPath: filepath.Join(dir, "ca.crt")}
	if err := writePEM(p.CACertPath, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	if p.Leaf, err = p.NewLeaf("leaf", "per-docker-roles-host", ECDSAP256); err != nil {
		return nil, err
	}
	if p.RSALeaf, err = p.NewLeaf("leaf-rsa", "per-docker-roles-host-rsa", RSA2048); err != nil {
		return nil, err
	}
	p.CertPath, p.KeyPath = p.Leaf.CertPath, p.Leaf.KeyPath
	return p, nil
}

// Pool returns a pool holding only this PKI's CA, for RAConfig.Roots.
func (p *PKI) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.CA)
	return pool
}

// NewLeaf issues a client certificate for commonName signed by the CA and
// writes <name>.crt and <name>.key (PKCS#8) into the PKI directory.
func (p *PKI) NewLeaf(name, commonName string, kt KeyType) (*Leaf, error) {
	key, err := newKey(kt)
	if err != nil {
		return nil, fmt.Errorf("generate %s key for %s: %w", kt, name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"per-docker-roles tests"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA, key.Public(), p.CAKey)
	if err != nil {
		return nil, fmt.Errorf("create certificate %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate %s: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key %s: %w", name, err)
	}
	l := &Leaf{
		Cert:     cert,
		Key:      key,
		CertPath: filepath.Join(p.Dir, name+".crt"),
		KeyPath:  filepath.Join(p.Dir, name+".key"),
	}
	if err := writePEM(l.CertPath, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	if err := writePEM(l.KeyPath, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return nil, err
	}
	return l, nil
}

func newKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, fmt.Errorf("%w: %d", ErrUnknownKeyType, int(kt))
}

// randomSerial returns a positive 127-bit serial: the helper puts the decimal
// serial in the Authorization credential, so it must be unique per leaf.
func randomSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

func writePEM(path, blockType string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
