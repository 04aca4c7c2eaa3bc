package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/devcert"
	"github.com/mcptun/mcptun/tunnel"
)

// The attacks on the tunnel: a party that is not the agent trying to pass
// for it, a party that is not the relay trying to pass for it, and a relay
// (or whoever holds the tunnel) asking the agent for more than its config.

// --- agent impersonation, against the real relay ------------------------

// advTunnelConn is an attacker's connection to the relay's tunnel port with
// one stream open on it, speaking frames by hand.
type advTunnelConn struct {
	st    io.ReadWriteCloser
	close func()
}

func advDialTunnelRaw(t *testing.T, e *advEnv, transport string) *advTunnelConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch transport {
	case "quic":
		conn := e.dialQUIC(t, ctx, tunnel.ALPN)
		require.NotNil(t, conn)
		st, err := conn.OpenStreamSync(ctx)
		require.NoError(t, err)
		return &advTunnelConn{st: st, close: func() { conn.CloseWithError(0, "") }}
	case "tcp":
		c, err := e.dialTLS(ctx, tunnel.ALPN)
		require.NoError(t, err)
		mux, err := yamux.Client(c, nil)
		require.NoError(t, err)
		st, err := mux.OpenStream()
		require.NoError(t, err)
		tc := &advTunnelConn{st: st, close: func() { mux.Close(); c.Close() }}
		t.Cleanup(tc.close)
		return tc
	}
	t.Fatalf("unknown transport %q", transport)
	return nil
}

// dialTLS connects to the tunnel port over TLS from a fresh attacker
// address.
func (e *advEnv) dialTLS(ctx context.Context, alpn string) (*tls.Conn, error) {
	return e.dialTLSFrom(ctx, e.attackerIP(), alpn)
}

func (e *advEnv) dialTLSFrom(ctx context.Context, ip net.IP, alpn string) (*tls.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}, Config: advInsecureTLS(alpn)}
	c, err := d.DialContext(ctx, "tcp", e.tunnelAddr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

// dialQUIC connects to the tunnel port over QUIC from a fresh attacker
// address; the connection and its socket are closed when t ends.
func (e *advEnv) dialQUIC(t *testing.T, ctx context.Context, alpn string) *quic.Conn {
	t.Helper()
	conn, err := e.tryQUIC(t, ctx, alpn, &quic.Config{MaxIdleTimeout: time.Minute})
	require.NoError(t, err)
	return conn
}

func (e *advEnv) tryQUIC(t *testing.T, ctx context.Context, alpn string, conf *quic.Config) (*quic.Conn, error) {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: e.attackerIP()})
	require.NoError(t, err)
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() { tr.Close(); udp.Close() })
	addr, err := net.ResolveUDPAddr("udp", e.tunnelAddr)
	require.NoError(t, err)
	conn, err := tr.Dial(ctx, addr, advInsecureTLS(alpn), conf)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn, nil
}

func advWriteTunnelFrame(t *testing.T, w io.Writer, body []byte) {
	t.Helper()
	buf := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	_, err := w.Write(append(buf, body...))
	require.NoError(t, err, "write frame")
}

type advRelayAnswer struct {
	Type, Code, Message string
}

// advReadRelayAnswer reads the relay's frame (within 15 s).
func advReadRelayAnswer(t *testing.T, st io.Reader) advRelayAnswer {
	t.Helper()
	type res struct {
		a   advRelayAnswer
		err error
	}
	ch := make(chan res, 1)
	go func() {
		var hdr [4]byte
		if _, err := io.ReadFull(st, hdr[:]); err != nil {
			ch <- res{err: fmt.Errorf("read frame header: %w", err)}
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > tunnel.MaxFrameSize {
			ch <- res{err: fmt.Errorf("frame of %d bytes", n)}
			return
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(st, b); err != nil {
			ch <- res{err: fmt.Errorf("read frame: %w", err)}
			return
		}
		var a advRelayAnswer
		ch <- res{a: a, err: json.Unmarshal(b, &a)}
	}()
	select {
	case r := <-ch:
		require.NoError(t, r.err, "the relay's answer")
		return r.a
	case <-time.After(15 * time.Second):
		t.Fatal("no answer from the relay within 15 s")
	}
	return advRelayAnswer{}
}

// advHelloRefused sends a hello (any JSON value) and asserts the refusal code.
func advHelloRefused(transport string, advHello any, code string) func(*testing.T, *advEnv) {
	return func(t *testing.T, e *advEnv) {
		c := advDialTunnelRaw(t, e, transport)
		b, err := json.Marshal(advHello)
		require.NoError(t, err)
		advWriteTunnelFrame(t, c.st, b)
		a := advReadRelayAnswer(t, c.st)
		require.Equal(t, "refused", a.Type, "answer %+v", a)
		require.Equal(t, code, a.Code, "answer %+v", a)
		require.NotEmpty(t, a.Message)
	}
}

func advHello(agent, token string) map[string]any {
	return map[string]any{"type": "hello", "version": tunnel.ProtocolVersion, "agent": agent, "token": token,
		"servers": []map[string]string{{"name": "notes", "kind": "stdio"}}}
}

// advConnectAs opens an authenticated tunnel session with the relay the way
// an agent does.
func advConnectAs(t *testing.T, e *advEnv, name, token, transport string) (tunnel.Session, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return tunnel.Connect(ctx, tunnel.ClientConfig{
		Name: name, Address: e.tunnelAddr, Token: token, TLSConfig: advInsecureTLS(),
		Transport: transport, Servers: []tunnel.OfferedServer{{Name: "notes", Kind: tunnel.KindStdio}},
		Logger: slog.New(slog.DiscardHandler),
	})
}

func agentImpersonationCases() []advAttack {
	// refusedConnect sends an agent's hello with a credential that must
	// not pass.
	refusedConnect := func(name, token, transport string) func(*testing.T, *advEnv) {
		return advHelloRefused(transport, advHello(name, token), tunnel.CodeBadCredential)
	}
	servers := make([]map[string]string, 1001)
	for i := range servers {
		servers[i] = map[string]string{"name": fmt.Sprintf("s%d", i), "kind": "stdio"}
	}
	tooMany := advHello("dc3", advDC3Token)
	tooMany["servers"] = servers
	future := advHello("dc3", advDC3Token)
	future["version"] = 99
	notHello := advHello("dc3", advDC3Token)
	notHello["type"] = "welcome"
	return []advAttack{
		{category: "agent", name: "wrong_token_over_quic", run: refusedConnect("dc3", "adv-wrong-token-0123456789", "quic")},
		{category: "agent", name: "wrong_token_over_tcp", run: refusedConnect("dc3", "adv-wrong-token-0123456789", "tcp")},
		{category: "agent", name: "unknown_agent_name", run: refusedConnect("dc9", advDC3Token, "quic")},
		{category: "agent", name: "another_agents_token", run: refusedConnect("dc3", advDC1Token, "quic")},
		{category: "agent", name: "token_hash_as_token", run: refusedConnect("dc3", sha256Hex(advDC3Token), "tcp")},
		{category: "agent", name: "connected_agents_name_with_wrong_token", run: func(t *testing.T, e *advEnv) {
			refusedConnect("dc1", "adv-wrong-token-0123456789", "quic")(t, e)
			refusedConnect("dc1", "adv-wrong-token-0123456789", "tcp")(t, e)
			e.victimWorks(t, "/dc1/notes/mcp")
		}},
		{category: "agent", name: "oversized_frame", run: func(t *testing.T, e *advEnv) {
			c := advDialTunnelRaw(t, e, "tcp")
			_, err := c.st.Write([]byte{0xff, 0xff, 0xff, 0xff, '{'})
			require.NoError(t, err)
			a := advReadRelayAnswer(t, c.st)
			require.Equal(t, advRelayAnswer{Type: "refused", Code: tunnel.CodeBadHello, Message: a.Message}, a)
		}},
		{category: "agent", name: "garbage_before_hello", run: func(t *testing.T, e *advEnv) {
			c := advDialTunnelRaw(t, e, "quic")
			b, _ := json.Marshal(advHello("dc3", advDC3Token))
			_, err := c.st.Write(append([]byte("GET / HTTP/1.1\r\n\r\n"), b...))
			require.NoError(t, err)
			a := advReadRelayAnswer(t, c.st)
			require.Equal(t, advRelayAnswer{Type: "refused", Code: tunnel.CodeBadHello, Message: a.Message}, a)
		}},
		{category: "agent", name: "hello_that_is_not_json", run: func(t *testing.T, e *advEnv) {
			c := advDialTunnelRaw(t, e, "tcp")
			advWriteTunnelFrame(t, c.st, []byte("advHello, it's dc1"))
			a := advReadRelayAnswer(t, c.st)
			require.Equal(t, advRelayAnswer{Type: "refused", Code: tunnel.CodeBadHello, Message: a.Message}, a)
		}},
		{category: "agent", name: "first_frame_not_a_hello", run: advHelloRefused("quic", notHello, tunnel.CodeBadHello)},
		{category: "agent", name: "unsupported_protocol_version", run: advHelloRefused("quic", future, tunnel.CodeUnsupportedVersion)},
		{category: "agent", name: "invalid_agent_name", run: advHelloRefused("tcp", advHello("../dc1", advDC1Token), tunnel.CodeBadHello)},
		{category: "agent", name: "too_many_servers", run: advHelloRefused("quic", tooMany, tunnel.CodeBadHello)},
		{category: "agent", name: "oversized_token", run: advHelloRefused("tcp", advHello("dc3", strings.Repeat("t", 5000)), tunnel.CodeBadHello)},
		{category: "agent", name: "guessing_is_throttled", run: func(t *testing.T, e *advEnv) {
			// Wrong tokens from one address: after the allowance (10 at
			// once) its connections are dropped before TLS, even one with
			// the right token; another address is not affected.
			ip := e.attackerIP()
			hello := func(token string) error {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, err := e.dialTLSFrom(ctx, ip, tunnel.ALPN)
				if err != nil {
					return err
				}
				defer c.Close()
				mux, err := yamux.Client(c, nil)
				require.NoError(t, err)
				defer mux.Close()
				st, err := mux.OpenStream()
				require.NoError(t, err)
				b, _ := json.Marshal(advHello("dc3", token))
				advWriteTunnelFrame(t, st, b)
				a := advReadRelayAnswer(t, st)
				require.Equal(t, advRelayAnswer{Type: "refused", Code: tunnel.CodeBadCredential, Message: a.Message}, a)
				return nil
			}
			throttled := false
			for i := 0; i < 20 && !throttled; i++ {
				throttled = hello("adv-guess-0123456789") != nil
			}
			require.True(t, throttled, "20 wrong tokens from one address, none throttled")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := e.dialTLSFrom(ctx, ip, tunnel.ALPN)
			if c != nil {
				c.Close()
			}
			require.Error(t, err, "the right token from the throttled address is not looked at either")
			s, err := advConnectAs(t, e, "dc3", advDC3Token, "tcp")
			require.NoError(t, err, "an agent at another address connects")
			s.Close()
		}},
		{category: "agent", name: "wrong_alpn_over_tcp", run: func(t *testing.T, e *advEnv) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := e.dialTLS(ctx, "h2")
			if c != nil {
				c.Close()
			}
			require.Error(t, err, "the relay completes no TLS handshake for another protocol")
		}},
		{category: "agent", name: "wrong_alpn_over_quic", run: func(t *testing.T, e *advEnv) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := e.tryQUIC(t, ctx, "h3", &quic.Config{})
			require.Error(t, err, "the relay completes no QUIC handshake for another protocol")
			require.NotErrorIs(t, err, context.DeadlineExceeded, "refused, not ignored")
		}},
		{category: "agent", name: "plain_http_on_the_tunnel_port", run: func(t *testing.T, e *advEnv) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: e.attackerIP()}}
			c, err := d.Dial("tcp", e.tunnelAddr)
			require.NoError(t, err)
			defer c.Close()
			_, err = io.WriteString(c, "GET /dc1/notes/mcp HTTP/1.1\r\nHost: x\r\n\r\n")
			require.NoError(t, err)
			require.NoError(t, c.SetReadDeadline(time.Now().Add(15*time.Second)))
			b, _ := io.ReadAll(c)
			require.NotContains(t, string(b), "HTTP/1.1 2", "no HTTP answer from the tunnel port")
		}},
		{category: "agent", name: "agent_opens_a_stream_to_the_relay", run: func(t *testing.T, e *advEnv) {
			s, err := advConnectAs(t, e, "dc3", advDC3Token, "quic")
			require.NoError(t, err)
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			st, err := s.OpenStream(ctx)
			require.NoError(t, err)
			defer st.Close()
			_, _ = io.WriteString(st, "POST /dc1/notes/mcp HTTP/1.1\r\nHost: dc1\r\nContent-Length: 0\r\n\r\n")
			require.NoError(t, st.SetReadDeadline(time.Now().Add(15*time.Second)))
			b, err := io.ReadAll(st)
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "the relay neither closed nor reset the stream")
			require.Empty(t, b, "the relay answered a stream the agent opened")
		}},
		{category: "agent", name: "second_session_with_the_same_name_replaces_the_first", run: func(t *testing.T, e *advEnv) {
			// Documented behaviour: whoever holds the agent's credential
			// may take its name over; the older session is told and ends.
			first, err := advConnectAs(t, e, "dc3", advDC3Token, "tcp")
			require.NoError(t, err)
			defer first.Close()
			second, err := advConnectAs(t, e, "dc3", advDC3Token, "quic")
			require.NoError(t, err)
			defer second.Close()
			select {
			case <-first.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the replaced session did not end within 10 s")
			}
			e.relay.waitLine(t, regexp.MustCompile(`agent session replaced by a newer one.*agent=dc3`), 5*time.Second)
			// The newer session is the one the relay routes to: a client's
			// exchange arrives on it.
			type answer struct {
				r   rawResp
				err error
			}
			got := make(chan answer, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				r, err := e.doCtx(ctx, http.MethodPost, "/dc3/notes/mcp", advAliceToken, "", nil, advInit(1))
				got <- answer{r, err}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			st, err := second.AcceptStream(ctx)
			require.NoError(t, err, "the client's exchange reaches the newer session")
			defer st.Close()
			require.NoError(t, st.SetDeadline(time.Now().Add(15*time.Second)))
			req, err := http.ReadRequest(bufio.NewReader(st))
			require.NoError(t, err)
			require.Equal(t, "/notes/mcp", req.URL.Path)
			_, err = io.WriteString(st, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"from\":\"second\"}")
			require.NoError(t, err)
			a := <-got
			require.NoError(t, a.err)
			require.Equal(t, `{"from":"second"}`, a.r.Body)
		}},
		{category: "agent", name: "tls_connection_that_never_sends_a_hello", slow: true, run: func(t *testing.T, e *advEnv) {
			// A yamux session that answers the relay's pings but opens no
			// control stream: only the handshake timeout ends it.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := e.dialTLS(ctx, tunnel.ALPN)
			require.NoError(t, err)
			defer c.Close()
			mux, err := yamux.Client(c, nil)
			require.NoError(t, err)
			defer mux.Close()
			start := time.Now()
			select {
			case <-mux.CloseChan():
			case <-time.After(20 * time.Second):
				t.Fatal("the relay held a silent TLS connection for 20 s (handshake timeout 10 s)")
			}
			require.Greater(t, time.Since(start), 5*time.Second, "closed by the handshake timeout, not at once for another reason")
		}},
		{category: "agent", name: "quic_connection_that_never_sends_a_hello", slow: true, run: func(t *testing.T, e *advEnv) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn := e.dialQUIC(t, ctx, tunnel.ALPN)
			select {
			case <-conn.Context().Done():
			case <-time.After(20 * time.Second):
				t.Fatal("the relay held a silent QUIC connection for 20 s (handshake timeout 10 s)")
			}
		}},
	}
}

// --- relay impersonation: the real agent against a relay that is not --

// advFakeRelay listens with a certificate that is not the relay's and counts
// what reaches it: TLS handshakes completed and bytes after them.
type advFakeRelay struct {
	addr        string
	certPEM     []byte
	handshakes  atomic.Int64
	appBytes    atomic.Int64
	tcpAccepted atomic.Int64
	wg          sync.WaitGroup
}

func advStartFakeRelay(t *testing.T, transport string) *advFakeRelay {
	t.Helper()
	certPEM, keyPEM, err := devcert.Generate("127.0.0.1", "localhost")
	require.NoError(t, err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{tunnel.ALPN}, MinVersion: tls.VersionTLS13}
	f := &advFakeRelay{certPEM: certPEM}
	switch transport {
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		f.addr = ln.Addr().String()
		var conns sync.Map
		f.wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				f.tcpAccepted.Add(1)
				conns.Store(c, true)
				f.wg.Go(func() {
					defer conns.Delete(c)
					defer c.Close()
					tc := tls.Server(c, conf)
					_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
					if tc.Handshake() != nil {
						return
					}
					f.handshakes.Add(1)
					n, _ := io.Copy(io.Discard, tc)
					f.appBytes.Add(n)
				})
			}
		})
		t.Cleanup(func() {
			ln.Close()
			conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
			f.wg.Wait()
		})
	case "quic":
		ln, err := quic.ListenAddr("127.0.0.1:0", conf, &quic.Config{})
		require.NoError(t, err)
		f.addr = ln.Addr().String()
		ctx, cancel := context.WithCancel(context.Background())
		f.wg.Go(func() {
			for {
				conn, err := ln.Accept(ctx)
				if err != nil {
					return
				}
				f.handshakes.Add(1)
				f.wg.Go(func() {
					defer conn.CloseWithError(0, "")
					st, err := conn.AcceptStream(ctx)
					if err != nil {
						return
					}
					n, _ := io.Copy(io.Discard, st)
					f.appBytes.Add(n)
				})
			}
		})
		t.Cleanup(func() { cancel(); ln.Close(); f.wg.Wait() })
	}
	return f
}

func relayImpersonationCases() []advAttack {
	// refuses starts an agent configured by relayConf (a function of the
	// fake relay, the real relay's certificate file and the agent's
	// directory) against a fake relay and asserts it refuses to talk.
	refuses := func(transport string, relayConf func(f *advFakeRelay, realCert, dir string) string, why *regexp.Regexp) func(*testing.T, *advEnv) {
		return func(t *testing.T, e *advEnv) {
			f := advStartFakeRelay(t, transport)
			dir := t.TempDir()
			p := e.startAgent(t, "dc1", advDC1Token, relayConf(f, e.relayCert, dir),
				fmt.Sprintf("  - {name: notes, command: [%q, \"--stdio\"]}\n", fixtureBin), "")
			p.waitLine(t, regexp.MustCompile(`cannot connect to relay.*`+why.String()), 20*time.Second)
			p.stop(t)
			if transport == "tcp" {
				require.NotZero(t, f.tcpAccepted.Load(), "the agent did dial the fake relay")
			}
			require.Zero(t, f.handshakes.Load(), "the agent completed a TLS handshake with the fake relay")
			require.Zero(t, f.appBytes.Load(), "the agent sent the fake relay its hello")
		}
	}
	caFile := func(transport string) func(*advFakeRelay, string, string) string {
		return func(f *advFakeRelay, realCert, _ string) string {
			return fmt.Sprintf("{address: %q, ca_file: %q, transport: %s}", f.addr, realCert, transport)
		}
	}
	pin := func(transport string) func(*advFakeRelay, string, string) string {
		return func(f *advFakeRelay, realCert, _ string) string {
			return fmt.Sprintf("{address: %q, pin_sha256: %q, transport: %s}", f.addr, advPinOf(realCert), transport)
		}
	}
	wrongName := func(transport string) func(*advFakeRelay, string, string) string {
		return func(f *advFakeRelay, _, dir string) string {
			// The agent trusts the fake's certificate, but it was issued
			// for other names than the one the agent expects.
			p := filepath.Join(dir, "fake.crt")
			if err := os.WriteFile(p, f.certPEM, 0o600); err != nil {
				panic(err)
			}
			return fmt.Sprintf("{address: %q, ca_file: %q, server_name: relay.example.com, transport: %s}", f.addr, p, transport)
		}
	}
	certErr := regexp.MustCompile(`(x509|certificate)`)
	pinErr := regexp.MustCompile(`pin`)
	return []advAttack{
		{category: "relay", name: "other_certificate_than_ca_file_over_tcp", run: refuses("tcp", caFile("tcp"), certErr)},
		{category: "relay", name: "other_certificate_than_ca_file_over_quic", run: refuses("quic", caFile("quic"), certErr)},
		{category: "relay", name: "other_key_than_pinned_over_tcp", run: refuses("tcp", pin("tcp"), pinErr)},
		{category: "relay", name: "other_key_than_pinned_over_quic", run: refuses("quic", pin("quic"), pinErr)},
		{category: "relay", name: "trusted_certificate_for_another_name_over_tcp", run: refuses("tcp", wrongName("tcp"), certErr)},
		{category: "relay", name: "trusted_certificate_for_another_name_over_quic", run: refuses("quic", wrongName("quic"), certErr)},
	}
}

// advPinOf is the pin_sha256 of the certificate in a PEM file.
func advPinOf(certFile string) string {
	b, err := os.ReadFile(certFile)
	if err != nil {
		panic(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		panic(err)
	}
	return tunnel.PinSHA256(c)
}

// --- the agent reaches only what its config names -----------------------

// advReachEnv is an agent dialing a relay the test controls (tunnel.Listen in
// this process), so the test can send the agent what the real relay never
// would. Its config names a stdio server and a URL server whose host name
// resolves outside upstream_networks, at a sentinel address.
type advReachEnv struct {
	srv         *tunnel.Server
	advSentinel *advSentinel
}

// reach starts the reach agent the first time a case needs it; it lives
// until the suite ends.
func (e *advEnv) reach(t *testing.T) *advReachEnv {
	t.Helper()
	e.reachOnce.Do(func() { e.advReachEnv, e.reachErr = e.startReach() })
	require.NoError(t, e.reachErr)
	return e.advReachEnv
}

func (e *advEnv) startReach() (*advReachEnv, error) {
	t := e.root
	certPEM, keyPEM, err := devcert.Generate("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.dir, "reach")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "relay.crt")
	if err := os.WriteFile(caFile, certPEM, 0o600); err != nil {
		return nil, err
	}
	online := make(chan struct{})
	var once sync.Once
	srv, err := tunnel.Listen(context.Background(), tunnel.ServerConfig{
		Listen:    "127.0.0.1:0",
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		Agents:    []tunnel.AgentCredential{{Name: "dc1", TokenSHA256: sha256.Sum256([]byte(advDC1Token))}},
		OnAgentChange: func(name string, up bool) {
			if up {
				once.Do(func() { close(online) })
			}
		},
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { srv.Close() })
	s := advNewSentinel(t)
	_, port, _ := net.SplitHostPort(s.addr())
	e.startAgent(t, "dc1", advDC1Token, fmt.Sprintf("{address: %q, ca_file: %q, transport: quic}", srv.Addr(), caFile),
		fmt.Sprintf("  - {name: notes, command: [%q, \"--stdio\"]}\n  - {name: fenced, url: \"http://localhost:%s/mcp\"}\n", fixtureBin, port),
		"upstream_networks: [10.0.0.0/8]\n")
	select {
	case <-online:
	case <-time.After(30 * time.Second):
		return nil, errors.New("the reach agent did not connect to the test's relay within 30 s")
	}
	return &advReachEnv{srv: srv, advSentinel: s}, nil
}

// ask sends raw HTTP on a new tunnel stream to the agent and reads the
// answer.
func (r *advReachEnv) ask(t *testing.T, raw string) rawResp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	st, err := r.srv.Dial(ctx, "dc1")
	require.NoError(t, err)
	defer st.Close()
	require.NoError(t, st.SetDeadline(time.Now().Add(15*time.Second)))
	_, err = io.WriteString(st, raw)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(st), nil)
	require.NoError(t, err, "the agent's answer")
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return rawResp{resp.StatusCode, resp.Header, string(b)}
}

func reachCases() []advAttack {
	asks := func(build func(advSentinel string) string, status int, body string) func(*testing.T, *advEnv) {
		return func(t *testing.T, e *advEnv) {
			r := e.reach(t)
			before := r.advSentinel.conns.Load()
			a := r.ask(t, build(r.advSentinel.addr()))
			require.Equal(t, status, a.StatusCode, "body %.300s", a.Body)
			require.Contains(t, a.Body, body)
			require.Equal(t, before, r.advSentinel.conns.Load(), "the agent connected to an address outside its config")
		}
	}
	req := func(method, target string, extra ...string) func(string) string {
		return func(advSentinel string) string {
			h := []string{"Content-Type: application/json", "Accept: application/json, text/event-stream", "X-Mcptun-Client: alice"}
			host := "Host: dc1" // what the relay sends
			for _, x := range extra {
				x = strings.ReplaceAll(x, "SENTINEL", advSentinel)
				if strings.HasPrefix(x, "Host:") {
					host = x
				} else {
					h = append(h, x)
				}
			}
			return advHTTPReq(method, strings.ReplaceAll(target, "SENTINEL", advSentinel), append([]string{host}, h...), advInit(1))
		}
	}
	return []advAttack{
		{category: "reach", name: "server_not_in_the_agents_config", run: asks(req("POST", "/secret/mcp"), 404, "no MCP server")},
		{category: "reach", name: "absolute_form_to_an_internal_address", run: asks(req("POST", "http://SENTINEL/mcp"), 404, "no MCP server")},
		{category: "reach", name: "dot_dot_out_of_a_server", run: asks(req("POST", "/notes/../../mcp"), 404, "no MCP server")},
		{category: "reach", name: "encoded_dot_dot_out_of_a_server", run: asks(req("POST", "/notes/%2e%2e/secret/mcp"), 404, "no MCP server")},
		{category: "reach", name: "connect_to_an_internal_address", run: asks(func(s string) string {
			return fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", s, s)
		}, 404, "no MCP server")},
		{category: "reach", name: "url_server_resolving_outside_upstream_networks", run: asks(req("POST", "/fenced/mcp"), 502, "outside upstream_networks")},
		{category: "reach", name: "host_header_naming_an_internal_address", run: asks(req("POST", "/fenced/mcp", "Host: SENTINEL", "X-Forwarded-Host: SENTINEL"), 502, "outside upstream_networks")},
	}
}
