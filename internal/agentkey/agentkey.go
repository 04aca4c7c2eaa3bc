// Package agentkey reads and writes agents' Ed25519 keys: the private key
// file an agent signs its tunnel sessions with (PEM, PKCS#8, as `openssl
// genpkey -algorithm ed25519` writes it too) and the public key as
// relay.yaml lists it ("ed25519:" and base64).
package agentkey

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Prefix starts a public key as relay.yaml lists it.
const Prefix = "ed25519:"

// pemType is the PEM block type of a PKCS#8 private key.
const pemType = "PRIVATE KEY"

// Generate makes a new key pair.
func Generate() (ed25519.PrivateKey, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("agentkey: generate: %w", err)
	}
	return k, nil
}

// FormatPublic is pub as relay.yaml's public_keys lists it: Prefix and
// the standard base64 of the 32 key bytes.
func FormatPublic(pub ed25519.PublicKey) string {
	return Prefix + base64.StdEncoding.EncodeToString(pub)
}

// ParsePublic reads a key written by FormatPublic (padded or not, standard
// or URL base64) or with the 64 hex digits of the key after the prefix.
func ParsePublic(s string) (ed25519.PublicKey, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), Prefix)
	if !ok {
		return nil, fmt.Errorf("%q does not start with %q: want %s followed by the base64 of the 32 key bytes, as `mcptun key new` prints it", clip(s), Prefix, Prefix)
	}
	var b []byte
	var err error
	if len(rest) == 2*ed25519.PublicKeySize {
		b, err = hex.DecodeString(rest)
	} else {
		trimmed := strings.TrimRight(rest, "=")
		b, err = base64.RawStdEncoding.DecodeString(trimmed)
		if err != nil {
			b, err = base64.RawURLEncoding.DecodeString(trimmed)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%q: the key after %q is neither base64 nor hex", clip(s), Prefix)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%q: the key is %d bytes, want %d", clip(s), len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// MarshalPrivate encodes key as a PEM PKCS#8 block.
func MarshalPrivate(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("agentkey: marshal: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), nil
}

// ErrNotEd25519 is wrapped by ParsePrivate for a valid key of another
// algorithm (the private key of a certificate, perhaps).
var ErrNotEd25519 = errors.New("not an Ed25519 key")

// ParsePrivate reads a PEM PKCS#8 Ed25519 private key.
func ParsePrivate(b []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block found (want -----BEGIN PRIVATE KEY-----, as `mcptun key new` writes)")
	}
	if block.Type != pemType {
		return nil, fmt.Errorf("PEM block %q, want %q (PKCS#8; convert with: openssl pkcs8 -topk8 -nocrypt)", clip(block.Type), pemType)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not a PKCS#8 private key: %w", err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: holds a %T", ErrNotEd25519, k)
	}
	return ek, nil
}

// clip keeps error messages short: they may quote a whole file's line.
func clip(s string) string {
	const n = 80
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}
