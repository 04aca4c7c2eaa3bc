// Package pki makes the certificates an operator needs for a relay: a small
// CA of their own and a relay certificate it signs, for the names agents and
// clients dial. `mcptun cert` and `mcptun init` use it; unlike
// internal/devcert the keys are written to files (mode 0600) and meant for
// real use.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/mcptun/mcptun/tunnel"
)

// Key types.
const (
	KeyECDSA   = "ecdsa"   // ECDSA P-256: what every TLS client speaks
	KeyEd25519 = "ed25519" // smaller and faster; some non-Go clients lack it
)

// Default validities: the CA outlives several relay certificates, so a
// renewed relay certificate needs no change on the agents (ca_file).
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultCertValidity = 825 * 24 * time.Hour // the longest most TLS clients accept
)

// File names inside a certificate directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
	CertFile   = "relay.crt"
	KeyFile    = "relay.key"
)

// CA is a certificate authority: its certificate and signing key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

func newKey(keyType string) (crypto.Signer, error) {
	switch keyType {
	case "", KeyECDSA:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("pki: unknown key type %q: use %s or %s", keyType, KeyECDSA, KeyEd25519)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA makes a self-signed CA named name.
func NewCA(name, keyType string, validity time.Duration) (*CA, error) {
	key, err := newKey(keyType)
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	// Backdated a little so a peer whose clock lags still accepts it.
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"mcptun"}},
		NotBefore:             now,
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Issue makes a server certificate for names (DNS names or IP addresses)
// signed by ca. It returns the certificate and its private key.
func (ca *CA) Issue(names []string, keyType string, validity time.Duration) (*x509.Certificate, crypto.Signer, error) {
	if len(names) == 0 {
		return nil, nil, errors.New("pki: a certificate needs at least one name (--name relay.example.com)")
	}
	key, err := newKey(keyType)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, fmt.Errorf("pki: serial number: %w", err)
	}
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    now,
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		// ECDSA keys also do key agreement in TLS 1.2.
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	for _, n := range names {
		switch {
		case n == "":
			return nil, nil, errors.New("pki: empty certificate name")
		case net.ParseIP(n) != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(n))
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if notAfter := ca.Cert.NotAfter; tmpl.NotAfter.After(notAfter) {
		tmpl.NotAfter = notAfter // a chain is valid only as long as its CA
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: parse certificate: %w", err)
	}
	return cert, key, nil
}

// CertPEM encodes a certificate.
func CertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// KeyPEM encodes a private key as PKCS#8.
func KeyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pki: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Pin is the pin_sha256 of a certificate: the hex SHA-256 of its public
// key, as the agent checks it (tunnel.PinSHA256).
func Pin(c *x509.Certificate) string { return tunnel.PinSHA256(c) }

// LoadCA reads a CA certificate and key written by WriteCA.
func LoadCA(certPath, keyPath string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA %s, %s: %w", certPath, keyPath, err)
	}
	if !pair.Leaf.IsCA {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", certPath)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: %s: key cannot sign", keyPath)
	}
	return &CA{Cert: pair.Leaf, Key: signer}, nil
}

// WriteFile writes data to path with mode, refusing to replace an existing
// file unless overwrite. A key is written 0600, so only its owner (the
// service user) reads it; certificates 0644.
func WriteFile(path string, data []byte, mode fs.FileMode, overwrite bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if overwrite {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create directory for %s: %w", path, err)
	}
	f, err := os.OpenFile(path, flags, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists; not replacing it (use --force to replace)", path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// OpenFile's mode is masked by umask and ignored for an existing file.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// Result is what Make wrote.
type Result struct {
	CACert, CAKey, Cert, Key string // paths
	CAReused                 bool   // an existing CA in the directory signed the certificate
	Pin                      string // pin_sha256 of the relay certificate
	Leaf                     *x509.Certificate
}

// Options for Make.
type Options struct {
	Dir       string
	Names     []string
	KeyType   string
	Validity  time.Duration // of the relay certificate; default DefaultCertValidity
	Overwrite bool          // replace an existing relay.crt/relay.key
}

// Make writes a relay certificate and key for opts.Names into opts.Dir,
// signed by the CA there (ca.crt, ca.key), which it creates first when
// there is none: issuing again for new names keeps the CA, so agents that
// trust it (ca_file) need no change.
func Make(opts Options) (*Result, error) {
	if opts.Validity == 0 {
		opts.Validity = DefaultCertValidity
	}
	r := &Result{
		CACert: filepath.Join(opts.Dir, CACertFile), CAKey: filepath.Join(opts.Dir, CAKeyFile),
		Cert: filepath.Join(opts.Dir, CertFile), Key: filepath.Join(opts.Dir, KeyFile),
	}
	if !opts.Overwrite {
		for _, p := range []string{r.Cert, r.Key} {
			if _, err := os.Stat(p); err == nil {
				return nil, fmt.Errorf("%s already exists; not replacing it (use --force to replace)", p)
			}
		}
	}
	_, certErr := os.Stat(r.CACert)
	_, keyErr := os.Stat(r.CAKey)
	var ca *CA
	var err error
	switch {
	case certErr == nil && keyErr == nil:
		if ca, err = LoadCA(r.CACert, r.CAKey); err != nil {
			return nil, err
		}
		r.CAReused = true
	case certErr == nil || keyErr == nil:
		return nil, fmt.Errorf("found only one of %s and %s: a CA needs both (move the other away to make a new CA)", r.CACert, r.CAKey)
	default:
		if ca, err = NewCA("mcptun CA", opts.KeyType, DefaultCAValidity); err != nil {
			return nil, err
		}
		keyPEM, err := KeyPEM(ca.Key)
		if err != nil {
			return nil, err
		}
		if err := WriteFile(r.CAKey, keyPEM, 0o600, false); err != nil {
			return nil, err
		}
		if err := WriteFile(r.CACert, CertPEM(ca.Cert), 0o644, false); err != nil {
			return nil, err
		}
	}
	leaf, key, err := ca.Issue(opts.Names, opts.KeyType, opts.Validity)
	if err != nil {
		return nil, err
	}
	keyPEM, err := KeyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := WriteFile(r.Key, keyPEM, 0o600, opts.Overwrite); err != nil {
		return nil, err
	}
	// The chain (leaf, then CA) so clients that know only the CA verify.
	chain := append(CertPEM(leaf), CertPEM(ca.Cert)...)
	if err := WriteFile(r.Cert, chain, 0o644, opts.Overwrite); err != nil {
		return nil, err
	}
	r.Pin, r.Leaf = Pin(leaf), leaf
	return r, nil
}
