// Package devcert makes throwaway self-signed TLS certificates for tests and
// for `mcptun demo`. Never use them for a real relay: the private key exists
// only in memory and the certificate is trusted only where it is pinned or
// passed as a CA file.
package devcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Validity is how long a generated certificate is valid.
const Validity = 365 * 24 * time.Hour

// DefaultHosts are used when Generate is called without hosts.
var defaultHosts = []string{"127.0.0.1", "::1", "localhost"}

// Generate returns a PEM certificate and PEM (PKCS#8) private key for a
// self-signed ECDSA P-256 certificate valid for one year for hosts (IP
// addresses or DNS names; 127.0.0.1, ::1 and localhost when none are given).
// The certificate is its own CA, so its PEM also works as a CA file.
func Generate(hosts ...string) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		hosts = defaultHosts
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("devcert: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("devcert: serial number: %w", err)
	}
	// Backdate a little so a peer whose clock lags slightly still accepts it.
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"mcptun development"}, CommonName: hosts[0]},
		NotBefore:             now,
		NotAfter:              now.Add(Validity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if h == "" {
			return nil, nil, fmt.Errorf("devcert: empty host name")
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("devcert: create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("devcert: marshal key: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// Certificate generates a certificate like Generate and returns it ready for
// a tls.Config, with the hex SHA-256 of its SubjectPublicKeyInfo: the value
// an agent pins (tunnel.PinSHA256 computes the same).
func Certificate(hosts ...string) (cert tls.Certificate, pinSHA256 string, err error) {
	certPEM, keyPEM, err := Generate(hosts...)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("devcert: load key pair: %w", err)
	}
	// X509KeyPair fills Leaf since Go 1.23.
	sum := sha256.Sum256(cert.Leaf.RawSubjectPublicKeyInfo)
	return cert, hex.EncodeToString(sum[:]), nil
}
