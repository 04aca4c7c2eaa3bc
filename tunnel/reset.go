package tunnel

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/quic-go/quic-go"
)

// QUIC stateless resets (RFC 9000 §10.3) let an endpoint that lost a
// connection's state (a crash, a restart) tell the peer at once that the
// connection is gone, instead of the peer waiting for its idle timeout. The
// reset token for a connection ID is derived from a key, so the key must be
// the same after a restart: both ends derive theirs from a secret they
// already have, with HKDF-SHA256 and a label per use, so no new secret or
// setting is needed and the secret itself is never exposed.
const (
	relayResetLabel = "mcptun/1 relay quic stateless reset key"
	agentResetLabel = "mcptun/1 agent quic stateless reset key"
)

// relayResetKey derives the relay's stateless reset key from the private
// key of its first TLS certificate, or of the certificate GetCertificate
// gives now (a relay that reloads its certificate serves it that way). ok
// is false when the configuration has no such key: the key is then random
// and resets work only while this process lives.
func relayResetKey(cfg *tls.Config) (key *quic.StatelessResetKey, ok bool, err error) {
	var secret []byte
	cert := (*tls.Certificate)(nil)
	if len(cfg.Certificates) > 0 {
		cert = &cfg.Certificates[0]
	} else if cfg.GetCertificate != nil {
		cert, _ = cfg.GetCertificate(&tls.ClientHelloInfo{})
	}
	if cert != nil && cert.PrivateKey != nil {
		secret, err = x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
		if err != nil {
			return nil, false, fmt.Errorf("tunnel: stateless reset key from the TLS private key: %w", err)
		}
	}
	if secret == nil {
		var k quic.StatelessResetKey
		if _, err := rand.Read(k[:]); err != nil {
			return nil, false, fmt.Errorf("tunnel: stateless reset key: %w", err)
		}
		return &k, false, nil
	}
	k, err := deriveResetKey(secret, relayResetLabel)
	return k, err == nil, err
}

// agentResetKey derives the agent's stateless reset key from the secret
// of its credential (its token, key seed or certificate key). The relay
// stores only a token's SHA-256 or a public key, and HKDF starts from
// neither, so the relay cannot compute this key.
func agentResetKey[S ~string | ~[]byte](secret S) (*quic.StatelessResetKey, error) {
	if len(secret) == 0 {
		return nil, errors.New("tunnel: stateless reset key: empty secret")
	}
	return deriveResetKey([]byte(secret), agentResetLabel)
}

func deriveResetKey(secret []byte, label string) (*quic.StatelessResetKey, error) {
	b, err := hkdf.Key(sha256.New, secret, nil, label, len(quic.StatelessResetKey{}))
	if err != nil {
		return nil, fmt.Errorf("tunnel: derive stateless reset key: %w", err)
	}
	var k quic.StatelessResetKey
	copy(k[:], b)
	return &k, nil
}
