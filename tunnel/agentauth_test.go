package tunnel

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/mcptun/mcptun/internal/agentkey"
	"github.com/mcptun/mcptun/internal/authguard"
)

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pubOf(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// clientCert makes a self-signed client certificate valid from notBefore
// to notAfter.
func clientCert(t testing.TB, notBefore, notAfter time.Time) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "lab agent"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func validClientCert(t testing.TB) *tls.Certificate {
	return clientCert(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
}

// keyConfig is agentConfig authenticating with key instead of a token.
func keyConfig(t *testing.T, addr string, key ed25519.PrivateKey) ClientConfig {
	cfg := agentConfig(t, addr)
	cfg.Token, cfg.Key = "", key
	return cfg
}

func certConfig(t *testing.T, addr string, cert *tls.Certificate) ClientConfig {
	cfg := agentConfig(t, addr)
	cfg.Token, cfg.Certificate = "", cert
	return cfg
}

// TestKeyAndCertAuth: an agent with an Ed25519 key or a client certificate
// listed at the relay connects over every transport and serves streams;
// the relay reports how it authenticated. A token agent still works
// beside them, each credential its own replica.
func TestKeyAndCertAuth(t *testing.T) {
	key, cert := newKey(t), validClientCert(t)
	spki, whole := certSums(cert.Leaf)
	tokenSum := sha256.Sum256([]byte(testToken))
	for _, tt := range []struct{ transport, mux, want string }{
		{TransportQUIC, "", TransportQUIC},
		{TransportTCP, "", TransportTCPYamux},
		{TransportQUIC, MuxYamux, TransportQUICYamux},
	} {
		t.Run(tt.want, func(t *testing.T) {
			ctx := testCtx(t)
			// The certificate is listed by its key's hash over QUIC and by
			// the whole certificate's otherwise: both forms match.
			certSum := whole
			if tt.want == TransportQUIC {
				certSum = spki
			}
			r := startRelay(t, ServerConfig{Agents: []AgentCredential{
				{Name: testAgent, PublicKey: pubOf(key)},
				{Name: testAgent, CertSHA256: certSum},
				{Name: testAgent, TokenSHA256: tokenSum},
			}})
			for _, c := range []struct {
				auth   string
				cfg    ClientConfig
				prefix string
			}{
				{AuthEd25519, keyConfig(t, r.Addr(), key), "key:"},
				{AuthCertificate, certConfig(t, r.Addr(), cert), "cert:"},
				{AuthToken, agentConfig(t, r.Addr()), "token:"},
			} {
				c.cfg.Transport, c.cfg.Mux = tt.transport, tt.mux
				a := startAgent(t, c.cfg, c.prefix)
				if err := a.WaitConnected(ctx); err != nil {
					t.Fatal(err)
				}
				r.waitEvent(t, "lab up")
				if got := a.Transport(); got != tt.want {
					t.Errorf("%s agent transport %q, want %q", c.auth, got, tt.want)
				}
			}
			st, _ := r.Agent(testAgent)
			auths := map[string]string{}
			for _, rs := range st.Replicas {
				auths[rs.Auth] = rs.Tag
			}
			if len(st.Replicas) != 3 || len(auths) != 3 {
				t.Fatalf("replicas %+v: want three, one per credential kind", st.Replicas)
			}
			for auth, prefix := range map[string]string{AuthEd25519: "key:", AuthCertificate: "cert:", AuthToken: "token:"} {
				if got := dialReplica(t, r, auths[auth]); got != prefix {
					t.Errorf("%s replica answered %q, want %q", auth, got, prefix)
				}
			}
			if n := r.log.count(`auth=ed25519`); n != 1 {
				t.Errorf("relay logged %d ed25519 connections, want 1", n)
			}
		})
	}
}

// TestKeyReplicas: each key is a replica of its own; a second connection
// with the same key replaces the first, as with tokens.
func TestKeyReplicas(t *testing.T) {
	ctx := testCtx(t)
	k1, k2 := newKey(t), newKey(t)
	r := startRelay(t, ServerConfig{Agents: []AgentCredential{
		{Name: testAgent, PublicKey: pubOf(k1)}, {Name: testAgent, PublicKey: pubOf(k2)},
	}})
	tag1, tag2 := ReplicaTag(keyCredID(pubOf(k1))), ReplicaTag(keyCredID(pubOf(k2)))
	// Once replaced, the first agent waits MaxBackoff on a clock that
	// never moves, so it does not take its session back.
	cfgA := keyConfig(t, r.Addr(), k1)
	cfgA.Clock, cfgA.MaxBackoff = newFakeClock(), time.Hour
	startAgent(t, cfgA, "a:")
	r.waitEvent(t, "lab up")
	startAgent(t, keyConfig(t, r.Addr(), k2), "b:")
	r.waitEvent(t, "lab up")
	if got := dialReplica(t, r, tag1); got != "a:" {
		t.Errorf("replica 1 answered %q", got)
	}
	if got := dialReplica(t, r, tag2); got != "b:" {
		t.Errorf("replica 2 answered %q", got)
	}
	cfg := keyConfig(t, r.Addr(), k1)
	cfg.Transport = TransportTCP
	c := startAgent(t, cfg, "c:")
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	r.waitEvent(t, "lab up")
	waitFor(t, "replacement", func() bool { return r.log.count("agent session replaced") == 1 })
	if got := dialReplica(t, r, tag1); got != "c:" {
		t.Errorf("replica 1 answered %q after its key reconnected, want c:", got)
	}
	if st, _ := r.Agent(testAgent); len(st.Replicas) != 2 {
		t.Errorf("%d replicas, want 2", len(st.Replicas))
	}
}

// TestKeyAndCertRefused: credentials the relay does not list, or cannot
// check, are refused with bad_credential over both transports, and the
// agent is never registered.
func TestKeyAndCertRefused(t *testing.T) {
	listed, other := newKey(t), newKey(t)
	cert := validClientCert(t)
	spki, _ := certSums(cert.Leaf)
	expired := clientCert(t, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	expSPKI, _ := certSums(expired.Leaf)
	// A guard that lets every refusal here be checked.
	guard := authguard.New(authguard.Config{Burst: 100, What: "agent handshake"})
	r := startRelay(t, ServerConfig{AuthGuard: guard, Agents: []AgentCredential{
		{Name: testAgent, PublicKey: pubOf(listed)},
		{Name: testAgent, CertSHA256: expSPKI},
		{Name: "other", CertSHA256: spki},
		{Name: "tok", TokenSHA256: sha256.Sum256([]byte(testToken))},
	}})
	for _, tt := range []struct {
		name, reason string
		cfg          func() ClientConfig
	}{
		{"unlisted key", "key not listed", func() ClientConfig { return keyConfig(t, r.Addr(), other) }},
		{"key of another agent", "unknown agent", func() ClientConfig {
			c := keyConfig(t, r.Addr(), listed)
			c.Name = "ghost"
			return c
		}},
		{"key where a token is listed", "key not listed", func() ClientConfig {
			c := keyConfig(t, r.Addr(), listed)
			c.Name = "tok"
			return c
		}},
		{"certificate of another agent", "certificate not listed", func() ClientConfig { return certConfig(t, r.Addr(), cert) }},
		{"expired certificate", "client certificate expired", func() ClientConfig { return certConfig(t, r.Addr(), expired) }},
	} {
		for _, transport := range []string{TransportQUIC, TransportTCP} {
			t.Run(tt.name+"/"+transport, func(t *testing.T) {
				ctx := testCtx(t)
				cfg := tt.cfg()
				cfg.Transport = transport
				before := r.log.count(tt.reason)
				_, err := Connect(ctx, cfg)
				wantRefused(t, err, CodeBadCredential)
				waitFor(t, "relay log reason "+tt.reason, func() bool { return r.log.count(tt.reason) > before })
				if _, ok := r.Agent(cfg.Name); ok {
					t.Error("refused agent is listed")
				}
			})
		}
	}
	// A hello that claims a certificate on a session without one.
	ctx := testCtx(t)
	a := answerTo(t, ctx, r, TransportTCP, func(h *hello, _ Session) {
		h.Auth, h.Token = AuthCertificate, ""
	})
	if a.Type != typeRefused || a.Code != CodeBadCredential || !strings.Contains(a.Message, "without a TLS client certificate") {
		t.Errorf("answer %+v, want bad_credential for a missing certificate", a)
	}
}

// answerTo sends, on a fresh session of the test agent's (token) TLS
// configuration, the hello mod makes and returns the relay's answer.
func answerTo(t *testing.T, ctx context.Context, r *relay, transport string, mod func(*hello, Session)) answer {
	t.Helper()
	cfg, err := agentConfig(t, r.Addr()).normalize()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Transport = transport
	sess, err := dial(ctx, &cfg, cfg.Logger, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	h := cfg.hello()
	mod(&h, sess)
	var b bytes.Buffer
	if err := writeFrame(&b, h); err != nil {
		t.Fatal(err)
	}
	return sendFrame(t, ctx, sess, b.Bytes())
}

// sendFrame opens the control stream on sess, writes frame and reads the
// relay's answer.
func sendFrame(t *testing.T, ctx context.Context, sess Session, frame []byte) answer {
	t.Helper()
	ctl, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	ctl.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := ctl.Write(frame); err != nil {
		t.Fatal(err)
	}
	b, err := readFrame(ctl)
	if err != nil {
		t.Fatal(err)
	}
	a, err := decodeAnswer(b)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// recordingRelay is a relay operator's own endpoint, with the same
// certificate as the real relay (the worst case: one identity), that
// records the hello an agent sends it, byte for byte, and hangs up.
type recordingRelay struct {
	addr  string
	hello chan []byte
	stop  func()
	// answer, if set, is sent back before hanging up.
	answer *answer
}

func startRecordingRelay(t *testing.T, transport string) *recordingRelay {
	return startFakeRelay(t, transport, nil)
}

func startFakeRelay(t *testing.T, transport string, reply *answer) *recordingRelay {
	t.Helper()
	cert, _, _ := testCert(t)
	tlsCfg := withALPN(&tls.Config{Certificates: []tls.Certificate{cert}}, ALPN)
	rr := &recordingRelay{hello: make(chan []byte, 1), answer: reply}
	var wg sync.WaitGroup
	record := func(sess Session) {
		defer sess.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctl, err := sess.AcceptStream(ctx)
		if err != nil {
			return
		}
		ctl.SetDeadline(time.Now().Add(10 * time.Second))
		body, err := readFrame(ctl)
		if err != nil {
			return
		}
		var b bytes.Buffer
		b.Write([]byte{byte(len(body) >> 24), byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))})
		b.Write(body)
		select {
		case rr.hello <- b.Bytes():
		default:
		}
		if rr.answer != nil && writeFrame(ctl, *rr.answer) == nil {
			ctl.CloseWrite()
			// Until the agent, having read the answer, hangs up.
			io.Copy(io.Discard, ctl)
		}
	}
	switch transport {
	case TransportTCP:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rr.addr = ln.Addr().String()
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				tc := tls.Server(c, tlsCfg)
				if tc.Handshake() != nil {
					c.Close()
					continue
				}
				ys, err := newYamux(tc, false, TransportTCPYamux, slogDiscard())
				if err != nil {
					c.Close()
					continue
				}
				record(ys)
			}
		})
		rr.stop = func() { ln.Close(); wg.Wait() }
	case TransportQUIC:
		ln, err := quic.ListenAddr("127.0.0.1:0", tlsCfg, quicConfig())
		if err != nil {
			t.Fatal(err)
		}
		rr.addr = ln.Addr().String()
		ctx, cancel := context.WithCancel(context.Background())
		wg.Go(func() {
			for {
				conn, err := ln.Accept(ctx)
				if err != nil {
					return
				}
				record(&quicSession{conn: conn})
			}
		})
		rr.stop = func() { cancel(); ln.Close(); wg.Wait() }
	}
	t.Cleanup(rr.stop)
	return rr
}

// TestKeyHelloReplayRefused: a relay operator records the hello a keyed
// agent sends to its relay and sends those very bytes to a relay that
// lists the key (same certificate, so only the session binding stands in
// the way), on a new connection: refused, while the agent itself
// connects there fine.
func TestKeyHelloReplayRefused(t *testing.T) {
	key := newKey(t)
	for _, transport := range []string{TransportTCP, TransportQUIC} {
		t.Run(transport, func(t *testing.T) {
			ctx := testCtx(t)
			rec := startRecordingRelay(t, transport)
			cfg := keyConfig(t, rec.addr, key)
			cfg.Transport = transport
			if _, err := Connect(ctx, cfg); err == nil {
				t.Fatal("the recording relay answered a welcome?")
			}
			var captured []byte
			select {
			case captured = <-rec.hello:
			case <-ctx.Done():
				t.Fatal("no hello recorded")
			}
			var h hello
			if err := json.Unmarshal(captured[4:], &h); err != nil || h.Auth != AuthEd25519 || len(h.Signature) != ed25519.SignatureSize {
				t.Fatalf("recorded hello %q: %v", captured, err)
			}

			r := startRelay(t, ServerConfig{Agents: []AgentCredential{{Name: testAgent, PublicKey: pubOf(key)}}})
			ncfg, err := agentConfig(t, r.Addr()).normalize()
			if err != nil {
				t.Fatal(err)
			}
			ncfg.Transport = transport
			sess, err := dial(ctx, &ncfg, ncfg.Logger, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			a := sendFrame(t, ctx, sess, captured)
			if a.Type != typeRefused || a.Code != CodeBadCredential || !strings.Contains(a.Message, "does not verify") {
				t.Fatalf("replayed hello answered %+v, want refused bad_credential (signature)", a)
			}
			if _, ok := r.Agent(testAgent); ok {
				t.Fatal("the replayed hello registered the agent")
			}
			waitFor(t, "relay log", func() bool { return r.log.count(`reason="bad signature"`) == 1 })

			// The agent itself, signing its own session, is welcome.
			cfg.Address = r.Addr()
			s, err := Connect(ctx, cfg)
			if err != nil {
				t.Fatalf("the agent itself: %v", err)
			}
			s.Close()
		})
	}
}

// TestKeySignatureBoundToRelayCert: a signature made for one relay
// certificate does not verify at a relay with another, even on its own
// session: the transcript names the certificate the agent saw.
func TestKeySignatureBoundToRelayCert(t *testing.T) {
	ctx := testCtx(t)
	key := newKey(t)
	r := startRelay(t, ServerConfig{Agents: []AgentCredential{{Name: testAgent, PublicKey: pubOf(key)}}})
	a := answerTo(t, ctx, r, TransportTCP, func(h *hello, sess Session) {
		st, _ := sessionTLS(sess)
		ekm, err := sessionBinding(st)
		if err != nil {
			t.Fatal(err)
		}
		h.Token, h.Auth, h.PublicKey = "", AuthEd25519, pubOf(key)
		otherPin := sha256.Sum256([]byte("another relay's key"))
		h.Signature = ed25519.Sign(key, authTranscript(ekm, h.Agent, otherPin, pubOf(key)))
	})
	if a.Type != typeRefused || a.Code != CodeBadCredential {
		t.Fatalf("answer %+v, want bad_credential", a)
	}
	// The same, signed for this relay's certificate, is welcome: the
	// hand-made hello is right but for the pin.
	a = answerTo(t, ctx, r, TransportTCP, func(h *hello, sess Session) {
		h.Token, h.Auth = "", AuthEd25519
		if err := signHello(h, key, sess); err != nil {
			t.Fatal(err)
		}
	})
	if a.Type != typeWelcome {
		t.Fatalf("answer %+v, want welcome", a)
	}
}

// TestKeyFailuresThrottled: refused key handshakes count against the
// source like wrong tokens (see TestRefusedHandshakesThrottled).
func TestKeyFailuresThrottled(t *testing.T) {
	const burst = 2
	ctx := testCtx(t)
	logger, _ := newLog(t, "guard")
	guard := authguard.New(authguard.Config{Rate: 0.01, Burst: burst, What: "agent handshake", Logger: logger})
	listed := newKey(t)
	r := startRelay(t, ServerConfig{AuthGuard: guard, Agents: []AgentCredential{{Name: testAgent, PublicKey: pubOf(listed)}}})
	cfg := keyConfig(t, r.Addr(), newKey(t))
	cfg.Transport = TransportTCP
	refused := 0
	for range burst + 3 {
		_, err := Connect(ctx, cfg)
		var ref *RefusedError
		if errors.As(err, &ref) {
			refused++
		} else if err == nil {
			t.Fatal("an unlisted key connected")
		}
	}
	if refused != burst {
		t.Errorf("%d unlisted keys were checked, want the burst of %d", refused, burst)
	}
	if _, err := Connect(ctx, keyConfig(t, r.Addr(), listed)); err == nil {
		t.Error("a throttled source connected with the listed key")
	}
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestListenCredentialValidation(t *testing.T) {
	cert, _, _ := testCert(t)
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	pub := pubOf(newKey(t))
	h := sha256.Sum256([]byte("x"))
	for _, tt := range []struct {
		name   string
		agents []AgentCredential
		want   string
	}{
		{"two kinds in one", []AgentCredential{{Name: "a", TokenSHA256: h, PublicKey: pub}}, "one per entry"},
		{"short key", []AgentCredential{{Name: "a", PublicKey: pub[:5]}}, "5 bytes"},
		{"dup key", []AgentCredential{{Name: "a", PublicKey: pub}, {Name: "a", PublicKey: pub}}, "one ed25519"},
		{"dup cert", []AgentCredential{{Name: "a", CertSHA256: h}, {Name: "a", CertSHA256: h}}, "one certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Listen(context.Background(), ServerConfig{Listen: "127.0.0.1:0", TLSConfig: tlsCfg, Agents: tt.agents})
			if err == nil {
				s.Close()
				t.Fatal("Listen succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// TestKeyMultiRelay: one keyed agent keeps a tunnel to each of two relays
// that list its key, each session signed on its own, and both route to it.
// A relay operator gets nothing from its session to use at the other.
func TestKeyMultiRelay(t *testing.T) {
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			ctx := testCtx(t)
			key := newKey(t)
			creds := []AgentCredential{{Name: testAgent, PublicKey: pubOf(key)}}
			r1 := startRelay(t, ServerConfig{Agents: creds})
			r2 := startRelay(t, ServerConfig{Agents: creds})
			cc := keyConfig(t, "", key)
			cc.Transport = transport
			m, _ := startMulti(t, MultiConfig{Client: cc, Addresses: []string{r1.Addr(), r2.Addr()}}, "k:")
			r1.waitEvent(t, "lab up")
			r2.waitEvent(t, "lab up")
			if err := m.WaitConnected(ctx, 2); err != nil {
				t.Fatalf("WaitConnected(2): %v; status %+v", err, m.Status())
			}
			for i, r := range []*relay{r1, r2} {
				if got, err := roundTrip(ctx, r, testAgent, []byte("x")); err != nil || string(got) != "k:x" {
					t.Fatalf("through relay %d: %q, %v", i+1, got, err)
				}
			}
		})
	}
}

// TestRefusedAgentNamesItsCredential: a refused agent's log gives the
// value the relay's operator would list: its public key, or its
// certificate's hash.
func TestRefusedAgentNamesItsCredential(t *testing.T) {
	r := startRelay(t, ServerConfig{Agents: []AgentCredential{{Name: testAgent, PublicKey: pubOf(newKey(t))}}})
	key, cert := newKey(t), validClientCert(t)
	a := startAgent(t, keyConfig(t, r.Addr(), key), "")
	waitFor(t, "key refusal line", func() bool {
		return a.log.count(`public_key="`+agentkey.FormatPublic(pubOf(key))+`"`) >= 1
	})
	b := startAgent(t, certConfig(t, r.Addr(), cert), "")
	waitFor(t, "certificate refusal line", func() bool { return b.log.count("cert_sha256="+PinSHA256(cert.Leaf)) >= 1 })
}

// BenchmarkConnect measures one whole handshake (dial, TLS, hello,
// welcome) and close per iteration, per credential kind, so the cost of a
// key or a certificate shows against a token's.
func BenchmarkConnect(b *testing.B) {
	key, cert := newKey(b), validClientCert(b)
	spki, _ := certSums(cert.Leaf)
	cred := []AgentCredential{
		{Name: testAgent, TokenSHA256: sha256.Sum256([]byte(testToken))},
		{Name: testAgent, PublicKey: pubOf(key)},
		{Name: testAgent, CertSHA256: spki},
	}
	cases := []struct {
		name string
		mod  func(*ClientConfig)
	}{
		{AuthToken, func(*ClientConfig) {}},
		{AuthEd25519, func(c *ClientConfig) { c.Token, c.Key = "", key }},
		{AuthCertificate, func(c *ClientConfig) { c.Token, c.Certificate = "", cert }},
	}
	for _, transport := range []string{TransportTCP, TransportQUIC} {
		for _, tc := range cases {
			b.Run(transport+"/"+tc.name, func(b *testing.B) {
				cert0, pin, _ := testCert(b)
				s, err := Listen(context.Background(), ServerConfig{Listen: "127.0.0.1:0", Agents: cred,
					TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert0}}})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				tlsCfg, _ := ClientTLS("127.0.0.1", "", pin)
				cfg := ClientConfig{Name: testAgent, Address: s.Addr(), Token: testToken, TLSConfig: tlsCfg, Transport: transport}
				tc.mod(&cfg)
				ctx := context.Background()
				b.ResetTimer()
				for b.Loop() {
					sess, err := Connect(ctx, cfg)
					if err != nil {
						b.Fatal(err)
					}
					sess.Close()
				}
			})
		}
	}
}

// TestOlderRelayHint: a relay from before agent keys reads a keyed hello
// as a token's without one and answers bad_hello "empty token"; the agent
// says the relay may be too old.
func TestOlderRelayHint(t *testing.T) {
	old := startFakeRelay(t, TransportTCP, &answer{Type: typeRefused, Code: CodeBadHello, Message: "empty token"})
	cfg := keyConfig(t, old.addr, newKey(t))
	cfg.Transport = TransportTCP
	a := startAgent(t, cfg, "")
	waitFor(t, "the hint", func() bool { return a.log.count("the relay may be older than agent keys") >= 1 })
}
