package pki

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/tunnel"
)

// TestMakeHandshake: the files Make writes serve a real TLS 1.3 handshake
// that an agent configured with ca_file, or with the printed pin, accepts,
// for every name given; key files are 0600.
func TestMakeHandshake(t *testing.T) {
	for _, kt := range []string{KeyECDSA, KeyEd25519} {
		t.Run(kt, func(t *testing.T) {
			dir := t.TempDir()
			r, err := Make(Options{Dir: dir, Names: []string{"relay.test", "127.0.0.1"}, KeyType: kt})
			require.NoError(t, err)
			for p, want := range map[string]os.FileMode{r.CAKey: 0o600, r.Key: 0o600, r.CACert: 0o644, r.Cert: 0o644} {
				fi, err := os.Stat(p)
				require.NoError(t, err)
				require.Equal(t, want, fi.Mode().Perm(), p)
			}
			pair, err := tls.LoadX509KeyPair(r.Cert, r.Key)
			require.NoError(t, err)
			require.Equal(t, r.Pin, tunnel.PinSHA256(pair.Leaf))

			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
			require.NoError(t, err)
			defer ln.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					_ = c.(*tls.Conn).Handshake()
					c.Close()
				}
			}()
			for _, tc := range []struct{ name, ca, pin, server string }{
				{"ca_file by IP", r.CACert, "", "127.0.0.1"},
				{"ca_file by DNS name", r.CACert, "", "relay.test"},
				{"pin", "", r.Pin, "anything"},
			} {
				conf, err := tunnel.ClientTLS(tc.server, tc.ca, tc.pin)
				require.NoError(t, err)
				c, err := tls.Dial("tcp", ln.Addr().String(), conf)
				require.NoError(t, err, tc.name)
				c.Close()
			}
			conf, err := tunnel.ClientTLS("other.test", r.CACert, "")
			require.NoError(t, err)
			_, err = tls.Dial("tcp", ln.Addr().String(), conf)
			require.ErrorContains(t, err, "other.test", "a name not in the certificate fails")
			ln.Close()
			<-done
		})
	}
}

// TestMakeKeepsCA: a second certificate in the same directory is signed by
// the CA already there; existing relay files are not replaced without
// Overwrite; half a CA is refused.
func TestMakeKeepsCA(t *testing.T) {
	dir := t.TempDir()
	r1, err := Make(Options{Dir: dir, Names: []string{"a.test"}})
	require.NoError(t, err)
	require.False(t, r1.CAReused)
	_, err = Make(Options{Dir: dir, Names: []string{"b.test"}})
	require.ErrorContains(t, err, "relay.crt already exists; not replacing it (use --force to replace)")
	caBefore, err := os.ReadFile(r1.CACert)
	require.NoError(t, err)
	r2, err := Make(Options{Dir: dir, Names: []string{"b.test"}, Overwrite: true})
	require.NoError(t, err)
	require.True(t, r2.CAReused)
	require.NotEqual(t, r1.Pin, r2.Pin)
	caAfter, err := os.ReadFile(r2.CACert)
	require.NoError(t, err)
	require.Equal(t, caBefore, caAfter)

	require.NoError(t, os.Remove(filepath.Join(dir, CAKeyFile)))
	_, err = Make(Options{Dir: dir, Names: []string{"c.test"}, Overwrite: true})
	require.ErrorContains(t, err, "found only one of")

	_, err = Make(Options{Dir: t.TempDir(), Names: nil})
	require.ErrorContains(t, err, "at least one name")
	_, err = Make(Options{Dir: t.TempDir(), Names: []string{"x"}, KeyType: "rsa"})
	require.ErrorContains(t, err, `unknown key type "rsa"`)
}

func TestIssueRejectsEmptyName(t *testing.T) {
	ca, err := NewCA("t", KeyECDSA, DefaultCAValidity)
	require.NoError(t, err)
	_, _, err = ca.Issue([]string{"a", ""}, KeyECDSA, DefaultCertValidity)
	require.ErrorContains(t, err, "empty certificate name")
}
