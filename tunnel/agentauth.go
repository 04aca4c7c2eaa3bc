package tunnel

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Agent keys: an agent may prove its identity with an Ed25519 key or a TLS
// client certificate instead of a token. Unlike a token, neither gives the
// relay anything it could use to pass for the agent elsewhere:
//
//   - With a key, the agent signs authTranscript, which holds keying
//     material exported from this very TLS session (RFC 8446 §7.5) and
//     the relay certificate's key as the agent saw it. A relay (or anyone
//     who records the hello) that sends the same hello on another TLS
//     session — to itself or to another relay — presents a signature over
//     another session's exporter, and is refused.
//   - With a certificate, the TLS handshake itself proves possession of
//     its key (CertificateVerify signs the handshake transcript); the
//     relay only compares the certificate's hash with its list.

// authExporterLabel is the TLS exporter label of the session binding.
// Private labels start with "EXPORTER" (RFC 5705 §4).
const authExporterLabel = "EXPORTER-mcptun agent auth v1"

// authContext opens the signed transcript, so that a signature made for
// this purpose is never valid for another.
const authContext = "mcptun agent auth v1\x00"

const exporterLen = 32

// authTranscript is what an Ed25519 agent signs: the context string, the
// TLS session's exported keying material, the agent's name, the SHA-256 of
// the relay certificate's SubjectPublicKeyInfo (its pin) and the agent's
// public key. Variable parts carry a length, so no two inputs give the
// same bytes.
func authTranscript(ekm []byte, agent string, relayPin [32]byte, pub ed25519.PublicKey) []byte {
	b := make([]byte, 0, len(authContext)+4+len(ekm)+4+len(agent)+len(relayPin)+len(pub))
	b = append(b, authContext...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ekm)))
	b = append(b, ekm...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(agent)))
	b = append(b, agent...)
	b = append(b, relayPin[:]...)
	b = append(b, pub...)
	return b
}

// sessionTLS is the TLS state under a session (QUIC's own, or that of the
// TLS connection or QUIC connection yamux runs on).
func sessionTLS(sess Session) (tls.ConnectionState, bool) {
	switch s := sess.(type) {
	case *quicSession:
		return s.conn.ConnectionState().TLS, true
	case *yamuxSession:
		if s.quic != nil {
			return s.quic.ConnectionState().TLS, true
		}
		if tc, ok := s.conn.Conn.(*tls.Conn); ok {
			return tc.ConnectionState(), true
		}
	}
	return tls.ConnectionState{}, false
}

// sessionBinding exports the keying material that ties a signature to
// one TLS session.
func sessionBinding(st tls.ConnectionState) ([]byte, error) {
	ekm, err := st.ExportKeyingMaterial(authExporterLabel, nil, exporterLen)
	if err != nil {
		return nil, fmt.Errorf("export TLS keying material: %w", err)
	}
	return ekm, nil
}

// signHello fills in the agent's signature for the session sess.
func signHello(h *hello, key ed25519.PrivateKey, sess Session) error {
	st, ok := sessionTLS(sess)
	if !ok {
		return errors.New("sign hello: no TLS state for the session")
	}
	if len(st.PeerCertificates) == 0 {
		return errors.New("sign hello: the relay sent no certificate")
	}
	ekm, err := sessionBinding(st)
	if err != nil {
		return fmt.Errorf("sign hello: %w", err)
	}
	pub := key.Public().(ed25519.PublicKey)
	pin := sha256.Sum256(st.PeerCertificates[0].RawSubjectPublicKeyInfo)
	h.PublicKey = pub
	h.Signature = ed25519.Sign(key, authTranscript(ekm, h.Agent, pin, pub))
	return nil
}

// certSums are the two hashes a relay.yaml cert_sha256 entry may give for
// a client certificate: of its SubjectPublicKeyInfo (as PinSHA256; it
// survives renewal with the same key) and of the whole certificate (what
// `openssl x509 -fingerprint -sha256` prints).
func certSums(c *x509.Certificate) (spki, whole [32]byte) {
	return sha256.Sum256(c.RawSubjectPublicKeyInfo), sha256.Sum256(c.Raw)
}

// credential identities: what ReplicaTag and the duplicate check see, per
// kind, so that no two kinds' credentials share one.
func keyCredID(pub ed25519.PublicKey) [32]byte {
	return sha256.Sum256(append([]byte("mcptun ed25519 key\x00"), pub...))
}

func certCredID(sum [32]byte) [32]byte {
	return sha256.Sum256(append([]byte("mcptun client certificate\x00"), sum[:]...))
}

// relayPins are the pins of the certificates the relay may have served on
// a session: those of its configuration, or what GetCertificate gives for
// the session's server name.
func relayPins(cfg *tls.Config, st tls.ConnectionState) [][32]byte {
	var pins [][32]byte
	add := func(c *tls.Certificate) {
		if c == nil || len(c.Certificate) == 0 {
			return
		}
		leaf := c.Leaf
		if leaf == nil {
			var err error
			if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
				return
			}
		}
		pins = append(pins, sha256.Sum256(leaf.RawSubjectPublicKeyInfo))
	}
	if cfg.GetCertificate != nil {
		if c, err := cfg.GetCertificate(&tls.ClientHelloInfo{ServerName: st.ServerName}); err == nil {
			add(c)
		}
	}
	for i := range cfg.Certificates {
		add(&cfg.Certificates[i])
	}
	return pins
}

// checkCertValidity refuses a client certificate outside its validity
// period: the relay pins the certificate instead of verifying a chain, but
// an operator who set an end date means it.
func checkCertValidity(c *x509.Certificate, now time.Time) error {
	if now.Before(c.NotBefore) {
		return fmt.Errorf("client certificate not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("client certificate expired at %s", c.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
