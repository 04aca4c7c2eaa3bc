package config

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/agentkey"
)

// writeKey writes a new Ed25519 key file and returns its public key as
// relay.yaml lists it.
func writeKey(t *testing.T, dir, name string, mode os.FileMode) string {
	t.Helper()
	k, err := agentkey.Generate()
	require.NoError(t, err)
	b, err := agentkey.MarshalPrivate(k)
	require.NoError(t, err)
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, b, mode))
	require.NoError(t, os.Chmod(p, mode))
	return agentkey.FormatPublic(k.Public().(ed25519Pub))
}

// writeCert writes a self-signed ECDSA client certificate and its key,
// valid from notBefore to notAfter, and returns the certificate's DER.
func writeCert(t *testing.T, dir string, notBefore, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dc1"}, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	writeFile(t, dir, "agent.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, dir, "agent.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	return der
}

type ed25519Pub = ed25519.PublicKey

const keyRelay = "relay: {address: \"127.0.0.1:7443\", key_file: agent.key}"

func agentWith(relayLine string) string {
	return strings.Replace(validAgent, `relay: {address: "127.0.0.1:7443", token_file: agent.token, transport: auto}`, relayLine, 1)
}

func TestLoadAgentKeyFile(t *testing.T) {
	dir := t.TempDir()
	pub := writeKey(t, dir, "agent.key", 0o600)
	c, err := LoadAgent(writeFile(t, dir, "agent.yaml", agentWith(keyRelay)))
	require.NoError(t, err)
	require.NotNil(t, c.Relay.Key)
	require.Equal(t, pub, agentkey.FormatPublic(c.Relay.Key.Public().(ed25519Pub)))
	require.Empty(t, c.Relay.Token)
	require.Nil(t, c.Relay.Certificate)
	require.Equal(t, filepath.Join(dir, "agent.key"), c.Relay.KeyFile, "relative to the config file")

	// From the environment too.
	t.Setenv("MCPTUN_RELAY_KEY_FILE", filepath.Join(dir, "agent.key"))
	c, err = LoadAgent(writeFile(t, dir, "agent2.yaml", agentWith(`relay: {address: "127.0.0.1:7443"}`)))
	require.NoError(t, err)
	require.NotNil(t, c.Relay.Key)
}

func TestLoadAgentCertFile(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	c, err := LoadAgent(writeFile(t, dir, "agent.yaml", agentWith(`relay: {address: "127.0.0.1:7443", cert_file: agent.crt, key_file: agent.key}`)))
	require.NoError(t, err)
	require.NotNil(t, c.Relay.Certificate)
	require.Nil(t, c.Relay.Key)
	require.Empty(t, c.Relay.Token)
}

func TestLoadAgentCredentialErrors(t *testing.T) {
	for _, tt := range []struct {
		name, relay, key, reason string
		setup                    func(t *testing.T, dir string)
	}{
		{"token and key", `relay: {address: "127.0.0.1:7443", token_file: agent.token, key_file: agent.key}`, "relay.key_file", "set one credential",
			func(t *testing.T, dir string) { writeKey(t, dir, "agent.key", 0o600) }},
		{"token and cert", `relay: {address: "127.0.0.1:7443", token_file: agent.token, cert_file: agent.crt, key_file: agent.key}`, "relay.cert_file", "not several",
			func(t *testing.T, dir string) {
				writeCert(t, dir, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
			}},
		{"cert without key", `relay: {address: "127.0.0.1:7443", cert_file: agent.crt}`, "relay.cert_file", "needs relay.key_file",
			func(t *testing.T, dir string) {
				writeCert(t, dir, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
			}},
		{"missing key file", keyRelay, "relay.key_file", "cannot read key file", func(*testing.T, string) {}},
		{"key file others may write", keyRelay, "relay.key_file", "chmod 600",
			func(t *testing.T, dir string) { writeKey(t, dir, "agent.key", 0o622) }},
		{"key not PEM", keyRelay, "relay.key_file", "no PEM block",
			func(t *testing.T, dir string) { writeFile(t, dir, "agent.key", "s3cret") }},
		{"ecdsa key alone", keyRelay, "relay.key_file", "a certificate's key goes with relay.cert_file",
			func(t *testing.T, dir string) {
				writeCert(t, dir, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
			}},
		{"cert and key mismatch", `relay: {address: "127.0.0.1:7443", cert_file: agent.crt, key_file: other.key}`, "relay.cert_file", "cannot load the client certificate",
			func(t *testing.T, dir string) {
				writeCert(t, dir, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
				writeKey(t, dir, "other.key", 0o600)
			}},
		{"expired cert", `relay: {address: "127.0.0.1:7443", cert_file: agent.crt, key_file: agent.key}`, "relay.cert_file", "expired at",
			func(t *testing.T, dir string) {
				writeCert(t, dir, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
			}},
		{"cert not yet valid", `relay: {address: "127.0.0.1:7443", cert_file: agent.crt, key_file: agent.key}`, "relay.cert_file", "not valid before",
			func(t *testing.T, dir string) {
				writeCert(t, dir, time.Now().Add(time.Hour), time.Now().Add(2*time.Hour))
			}},
		{"cert key others may write", `relay: {address: "127.0.0.1:7443", cert_file: agent.crt, key_file: agent.key}`, "relay.key_file", "writable by",
			func(t *testing.T, dir string) {
				writeCert(t, dir, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
				require.NoError(t, os.Chmod(filepath.Join(dir, "agent.key"), 0o666))
			}},
		{"no credential", `relay: {address: "127.0.0.1:7443"}`, "relay.token_file", "key_file for an Ed25519 key", func(*testing.T, string) {}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "agent.token", "s3cret")
			tt.setup(t, dir)
			p := writeFile(t, dir, "agent.yaml", agentWith(tt.relay))
			_, err := LoadAgent(p)
			require.Error(t, err)
			var ce *Error
			require.True(t, errors.As(err, &ce), "error %v is not a *config.Error", err)
			require.Contains(t, err.Error(), p)
			require.Contains(t, err.Error(), tt.key+":")
			require.Contains(t, err.Error(), tt.reason)
			require.NotContains(t, err.Error(), "s3cret", "secrets never appear in errors")
		})
	}
}

func TestLoadRelayAgentKeys(t *testing.T) {
	k1, _ := agentkey.Generate()
	k2, _ := agentkey.Generate()
	pub1, pub2 := agentkey.FormatPublic(k1.Public().(ed25519Pub)), agentkey.FormatPublic(k2.Public().(ed25519Pub))
	certHash := strings.ToUpper(hashA)
	var colons []string
	for i := 0; i < len(certHash); i += 2 {
		colons = append(colons, certHash[i:i+2])
	}
	dir := t.TempDir()
	body := strings.Replace(validRelay, `agents: [{name: dc1, token_sha256: "HASH"}]`,
		`agents:
  - {name: dc1, public_keys: ["`+pub1+`", "`+pub2+`"]}
  - {name: dc2, cert_sha256: "`+strings.Join(colons, ":")+`"}
  - {name: dc3, token_sha256: "HASH", public_keys: ["`+pub1+`"], cert_sha256: ["`+hashA+`"]}`, 1)
	c, err := LoadRelay(writeFile(t, dir, "relay.yaml", strings.ReplaceAll(body, "HASH", hashA)))
	require.NoError(t, err)
	require.Equal(t, []string{pub1, pub2}, c.Agents[0].PublicKeys)
	require.Equal(t, []string{hashA}, c.Agents[1].CertSHA256, "a fingerprint with colons, in capitals, is normalised")
	require.Len(t, c.Agents[2].TokenSHA256, 1)
}

func TestLoadRelayAgentKeyErrors(t *testing.T) {
	k, _ := agentkey.Generate()
	pub := agentkey.FormatPublic(k.Public().(ed25519Pub))
	raw := hex.EncodeToString(k.Public().(ed25519Pub))
	for _, tt := range []struct{ name, agent, key, reason string }{
		{"no credential", `{name: dc1}`, "agents[0].token_sha256", "or public_keys (mcptun key new) or cert_sha256"},
		{"empty lists", `{name: dc1, token_sha256: [], public_keys: [], cert_sha256: []}`, "agents[0].token_sha256", "required"},
		{"key without prefix", `{name: dc1, public_keys: ["` + raw + `"]}`, "agents[0].public_keys[0]", `does not start with "ed25519:"`},
		{"short key", `{name: dc1, public_keys: ["ed25519:AAAA"]}`, "agents[0].public_keys[0]", "3 bytes, want 32"},
		{"key twice", `{name: dc1, public_keys: ["` + pub + `", "ed25519:` + raw + `"]}`, "agents[0].public_keys[1]", "same key as agents[0].public_keys[0]"},
		{"bad cert hash", `{name: dc1, cert_sha256: ["abc"]}`, "agents[0].cert_sha256[0]", "64 hex"},
		{"cert hash twice", `{name: dc1, cert_sha256: ["HASH", "HASH"]}`, "agents[0].cert_sha256[1]", "same hash as agents[0].cert_sha256[0]"},
		{"bad token beside a key", `{name: dc1, token_sha256: "abc", public_keys: ["` + pub + `"]}`, "agents[0].token_sha256", "64 hex"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := strings.Replace(validRelay, `agents: [{name: dc1, token_sha256: "HASH"}]`, "agents: ["+tt.agent+"]", 1)
			p := writeFile(t, t.TempDir(), "relay.yaml", strings.ReplaceAll(body, "HASH", hashA))
			_, err := LoadRelay(p)
			require.Error(t, err)
			require.Contains(t, err.Error(), p)
			require.Contains(t, err.Error(), tt.key+":")
			require.Contains(t, err.Error(), tt.reason)
		})
	}
}
