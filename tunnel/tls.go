package tunnel

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// PinSHA256 returns the pin of cert: the hex SHA-256 of its
// SubjectPublicKeyInfo. A pin survives certificate renewal as long as the
// key stays the same.
func PinSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// ClientTLS builds the agent's TLS configuration for verifying the relay.
//
// With neither caFile nor pinSHA256Hex the system roots verify the relay's
// certificate chain and name. caFile (PEM) adds CAs to the system roots.
// pinSHA256Hex (64 hex digits, see PinSHA256) replaces chain and name
// verification with a check of the leaf's public key, so a self-signed
// certificate works. serverName is the name to verify and to send as SNI;
// when empty, NewClient uses the host of ClientConfig.Address.
func ClientTLS(serverName, caFile, pinSHA256Hex string) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName: serverName,
		MinVersion: tls.VersionTLS13,
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("tunnel: read ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tunnel: ca_file %s: no PEM certificates found", caFile)
		}
		cfg.RootCAs = pool
	}
	if pinSHA256Hex != "" {
		pin, err := parsePin(pinSHA256Hex)
		if err != nil {
			return nil, err
		}
		// The pin is the whole trust decision, so chain verification is off
		// and VerifyConnection, which crypto/tls runs on every handshake
		// (QUIC included), does the check.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tunnel: relay sent no certificate")
			}
			got := sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
			if subtle.ConstantTimeCompare(got[:], pin[:]) != 1 {
				return &PinMismatchError{Got: got, Want: pin}
			}
			return nil
		}
	}
	return cfg, nil
}

func parsePin(s string) ([32]byte, error) {
	var pin [32]byte
	s = strings.TrimSpace(s)
	if len(s) != 64 {
		return pin, fmt.Errorf("tunnel: pin_sha256 must be 64 hex digits, got %d characters", len(s))
	}
	if _, err := hex.Decode(pin[:], []byte(strings.ToLower(s))); err != nil {
		return pin, fmt.Errorf("tunnel: pin_sha256 is not hex: %w", err)
	}
	return pin, nil
}

// withALPN returns a copy of cfg offering protos and requiring TLS 1.3.
func withALPN(cfg *tls.Config, protos ...string) *tls.Config {
	c := cfg.Clone()
	c.NextProtos = protos
	c.MinVersion = tls.VersionTLS13
	return c
}
