package tunnel

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/devcert"
)

// TestProbeHints: Probe against a real relay, with the right and wrong
// trust, and against what an agent is often pointed at by mistake; each
// failure's Hint names the likely cause.
func TestProbeHints(t *testing.T) {
	r := startRelay(t, ServerConfig{})
	_, pin, _ := testCert(t)
	otherPEM, _, err := devcert.Generate()
	require.NoError(t, err)
	otherCA := filepath.Join(t.TempDir(), "other.crt")
	require.NoError(t, os.WriteFile(otherCA, otherPEM, 0o600))
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(http.NotFoundHandler())
	defer tlsSrv.Close()
	// The relay's own HTTPS front: TLS without ALPN (tls.NewListener).
	cert, _, _ := testCert(t)
	frontLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	front := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 5 * time.Second}
	frontDone := make(chan struct{})
	go func() {
		defer close(frontDone)
		_ = front.Serve(tls.NewListener(frontLn, &tls.Config{Certificates: []tls.Certificate{cert}}))
	}()
	defer func() { front.Close(); <-frontDone }()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct {
		name, addr, ca, pin string
		use                 string // transport auto would use; "" none
		hint                string // in Hint of the TCP error
	}{
		{"relay, pinned", r.Addr(), "", pin, TransportQUIC, ""},
		{"relay, ca_file", r.Addr(), caFile(t), "", TransportQUIC, ""},
		{"relay, wrong pin", r.Addr(), "", strings.Repeat("ab", 32), "", "set relay.pin_sha256 to the pin `mcptun cert` printed"},
		{"relay, other CA", r.Addr(), otherCA, "", "", "set relay.ca_file to the CA that signed it"},
		{"relay, system roots", r.Addr(), "", "", "", "set relay.ca_file to the CA that signed it"},
		{"relay, wrong name", r.Addr(), caFile(t), "", "", `the relay's certificate is not valid for "other.test"`},
		{"plain HTTP port", strings.TrimPrefix(plain.URL, "http://"), "", pin, "", "it looks like the relay's HTTP port (http.listen)"},
		{"HTTPS port", strings.TrimPrefix(tlsSrv.URL, "https://"), "", PinSHA256(tlsSrv.Certificate()), "", "it looks like the relay's HTTP port (http.listen)"},
		{"HTTPS front without ALPN", frontLn.Addr().String(), "", pin, "", "it looks like the relay's HTTP port (http.listen)"},
		{"nothing there", closedAddr, "", pin, "", "nothing listens there on TCP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "127.0.0.1"
			if strings.Contains(tc.name, "wrong name") {
				name = "other.test"
			}
			conf, err := ClientTLS(name, tc.ca, tc.pin)
			require.NoError(t, err)
			res, err := Probe(testCtx(t), tc.addr, conf, time.Second)
			require.NoError(t, err)
			require.Equal(t, tc.use, res.Use(TransportAuto), "quic: %v; tcp: %v", res.QUIC, res.TCP)
			if tc.hint == "" {
				require.NoError(t, res.TCP)
				return
			}
			require.Error(t, res.TCP)
			require.Contains(t, Hint(res.TCP), tc.hint, "tcp error: %v", res.TCP)
			if strings.Contains(tc.name, "relay") {
				// Over QUIC too: a certificate failure must not read
				// like a UDP problem.
				require.Contains(t, Hint(res.QUIC), tc.hint, "quic error: %v", res.QUIC)
			}
		})
	}
}

// TestAgentLogsHint: the agent's "cannot connect" log line carries the
// hint, not only check --probe.
func TestAgentLogsHint(t *testing.T) {
	r := startRelay(t, ServerConfig{})
	cfg := agentConfig(t, r.Addr())
	conf, err := ClientTLS("127.0.0.1", "", strings.Repeat("cd", 32))
	require.NoError(t, err)
	cfg.TLSConfig = conf
	cfg.QUICTimeout = 500 * time.Millisecond
	a := startAgent(t, cfg, "x")
	defer a.stop()
	waitFor(t, "the hint in the agent's log", func() bool {
		return strings.Contains(a.log.String(), "hint=\"the relay's certificate is not the pinned one")
	})
}

// TestHTTPClientAtTunnelPort: an MCP client pointed at the tunnel port,
// over plain HTTP or HTTPS, is answered 421 with reason tunnel_port and a
// message naming http.listen, instead of a TLS error or a reset.
func TestHTTPClientAtTunnelPort(t *testing.T) {
	r := startRelay(t, ServerConfig{})
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}} //nolint:gosec // the client under test is the mistaken one
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			resp, err := c.Post(scheme+"://"+r.Addr()+"/dc1/notes/mcp", "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode)
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			var body struct {
				Error struct {
					Message string
					Data    struct{ Reason string }
				}
			}
			require.NoError(t, json.Unmarshal(b, &body), string(b))
			require.Equal(t, "tunnel_port", body.Error.Data.Reason)
			require.Contains(t, body.Error.Message, "http.listen")
		})
	}
	waitFor(t, "the relay's log line", func() bool { return r.log.count("an HTTP client dialed the tunnel port") == 2 })
}
