package tunnel

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mcptun/mcptun/internal/devcert"
)

// TestDefaultsPinned: the README and doc.go promise these numbers; a change
// must be a decision, made here too.
func TestDefaultsPinned(t *testing.T) {
	for _, tt := range []struct {
		name      string
		got, want time.Duration
	}{
		{"reconnect backoff floor (README: 0.5 s)", DefaultMinBackoff, 500 * time.Millisecond},
		{"reconnect backoff cap (README: 30 s)", DefaultMaxBackoff, 30 * time.Second},
		{"session stable enough to reset the backoff", stableSession, 10 * time.Second},
		{"auto: QUIC's head start before TCP (README: 3 s)", DefaultQUICTimeout, 3 * time.Second},
		{"auto on TCP: first QUIC probe after at least", DefaultQUICProbeMin, 5 * time.Second},
		{"auto on TCP: QUIC probed at least every (README: 10 minutes)", DefaultQUICProbeMax, 10 * time.Minute},
		{"keep-alive (README: every second)", keepAlivePeriod, time.Second},
		{"idle timeout (README: dead peer within 4.5 s)", idleTimeout, 3500 * time.Millisecond},
		{"agent heartbeat", heartbeatInterval, time.Second},
		{"relay handshake timeout", DefaultHandshakeTimeout, 10 * time.Second},
		{"replaced session's grace", replaceGrace, 30 * time.Second},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	// The promise is the sum: a peer that dies right after its last packet
	// is noticed one keep-alive period plus the idle timeout later.
	if sum := keepAlivePeriod + idleTimeout; sum > 5*time.Second {
		t.Errorf("dead peer noticed after up to %v, promised within 5 s", sum)
	}

	// The constants are what the transports get.
	qc := quicConfig()
	if qc.KeepAlivePeriod != keepAlivePeriod || qc.MaxIdleTimeout != idleTimeout {
		t.Errorf("quic.Config keep-alive %v idle %v, want %v and %v", qc.KeepAlivePeriod, qc.MaxIdleTimeout, keepAlivePeriod, idleTimeout)
	}
	if yc := yamuxConfig(nil); yc.EnableKeepAlive {
		t.Error("yamux's own keep-alive is on; the watchdog replaces it")
	}
	cfg, err := agentConfig(t, "127.0.0.1:1").normalize()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.QUICProbeMin != DefaultQUICProbeMin || cfg.QUICProbeMax != DefaultQUICProbeMax || cfg.QUICTimeout != DefaultQUICTimeout {
		t.Errorf("normalize: probe %v..%v, QUIC timeout %v; want the defaults", cfg.QUICProbeMin, cfg.QUICProbeMax, cfg.QUICTimeout)
	}
	cfg.MinBackoff, cfg.MaxBackoff = 0, 0
	if cfg, err = cfg.normalize(); err != nil || cfg.MinBackoff != DefaultMinBackoff || cfg.MaxBackoff != DefaultMaxBackoff {
		t.Errorf("normalize: backoff %v..%v (%v); want the defaults", cfg.MinBackoff, cfg.MaxBackoff, err)
	}
	if cfg.Transport != TransportAuto {
		t.Errorf("default transport %q, want auto", cfg.Transport)
	}
}

func TestStatelessResetKeys(t *testing.T) {
	cert, _, _ := testCert(t)
	k1, ok, err := relayResetKey(&tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil || !ok {
		t.Fatalf("relay key: %v, stable %v", err, ok)
	}
	k2, _, _ := relayResetKey(&tls.Config{Certificates: []tls.Certificate{cert}})
	if *k1 != *k2 {
		t.Error("the relay's key differs between two derivations from one TLS key: a restart would not reset")
	}
	certPEM, keyPEM, err := devcert.Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	k3, _, _ := relayResetKey(&tls.Config{Certificates: []tls.Certificate{other}})
	if *k3 == *k1 {
		t.Error("two TLS keys gave one reset key")
	}
	// A relay that reloads its certificate serves it with GetCertificate:
	// the key comes from the certificate it gives at start.
	k4, ok, err := relayResetKey(&tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }})
	if err != nil || !ok || *k4 != *k1 {
		t.Errorf("GetCertificate only: stable %v, %v, same key as Certificates: %v", ok, err, err == nil && *k4 == *k1)
	}
	_, ok, err = relayResetKey(&tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }})
	if err != nil || ok {
		t.Errorf("GetCertificate without a certificate: stable %v, %v; want a random key and stable false", ok, err)
	}

	a1, err := agentResetKey(testToken)
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := agentResetKey(testToken)
	a3, _ := agentResetKey(testToken + "x")
	if *a1 != *a2 || *a1 == *a3 {
		t.Error("agent key: not a function of the token")
	}
	if bytes.Contains(a1[:], []byte(testToken)) {
		t.Error("agent key contains the token")
	}
	if _, err := agentResetKey(""); err == nil {
		t.Error("empty token: no error")
	}
}

// TestRelayCrashStatelessReset: the relay vanishes without a word (its UDP
// socket closed before it could send CONNECTION_CLOSE, as after SIGKILL)
// and a new relay starts on the same port with the same certificate. The
// agent learns from a stateless reset, not from its idle timeout.
func TestRelayCrashStatelessReset(t *testing.T) {
	ctx := testCtx(t)
	r1 := startRelay(t, ServerConfig{DisableTCP: true})
	addr := r1.Addr()
	cfg := agentConfig(t, addr)
	cfg.Transport = TransportQUIC
	cfg.MinBackoff, cfg.MaxBackoff = 500*time.Millisecond, time.Second
	a := startAgent(t, cfg, "a:")
	r1.waitEvent(t, "lab up")

	// The session runs a while first: early on, QUIC's path MTU probes are
	// big enough to draw a reset by themselves, later only the heartbeat
	// is (found by removing the heartbeat: the agent then waited for its
	// idle timeout). This wait is the scenario, not a condition.
	<-time.After(8 * time.Second)
	r1.udpConn.Close() // nothing more leaves this relay
	r1.Close()
	r2 := startRelay(t, ServerConfig{Listen: addr, DisableTCP: true})
	start := time.Now()
	r2.waitEvent(t, "lab up")
	took := time.Since(start)
	t.Logf("agent back %v after the new relay started", took.Round(time.Millisecond))
	if !strings.Contains(a.log.String(), "stateless reset") {
		t.Errorf("the agent did not learn of the restart from a stateless reset:\n%s", a.log)
	}
	if got, err := roundTrip(ctx, r2, testAgent, []byte("x")); err != nil || string(got) != "a:x" {
		t.Fatalf("after restart: %q, %v", got, err)
	}
}

// TestPeerVanishes: the path between agent and relay goes silent (datagrams
// dropped, TCP bytes held back), as when a peer is killed or frozen. Both
// ends notice within keepAlivePeriod + idleTimeout, over every transport.
func TestPeerVanishes(t *testing.T) {
	for _, tc := range []struct{ transport, mux string }{
		{TransportQUIC, MuxNative},
		{TransportQUIC, MuxYamux},
		{TransportTCP, MuxNative},
	} {
		t.Run(tc.transport+"+"+tc.mux, func(t *testing.T) {
			r := startRelay(t, ServerConfig{})
			g := newGate(t, r.Addr())
			cfg := agentConfig(t, g.Addr())
			cfg.Transport, cfg.Mux = tc.transport, tc.mux
			cfg.MinBackoff, cfg.MaxBackoff = time.Minute, time.Minute // no reconnect within the test
			a := startAgent(t, cfg, "a:")
			r.waitEvent(t, "lab up")

			g.dropUDP.Store(true)
			g.stall(true)
			start := time.Now()
			select {
			case ev := <-r.events:
				if ev != "lab down" {
					t.Fatalf("event %q, want lab down", ev)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("the relay did not notice the silent agent within 15 s")
			}
			took := time.Since(start)
			t.Logf("relay noticed after %v", took.Round(time.Millisecond))
			if took > keepAlivePeriod+idleTimeout+500*time.Millisecond {
				t.Errorf("relay noticed after %v, promised within %v", took, keepAlivePeriod+idleTimeout)
			}
			waitFor(t, "the agent to notice", func() bool { return !a.Connected() })
			if took := time.Since(start); took > keepAlivePeriod+idleTimeout+500*time.Millisecond {
				t.Errorf("agent noticed after %v, promised within %v", took, keepAlivePeriod+idleTimeout)
			}
			g.stall(false)
		})
	}
}

// TestMoveBackToQUIC: an auto agent that fell back to TCP because UDP was
// blocked moves to QUIC once UDP passes again, and an exchange in flight on
// the TCP session finishes intact; the relay ends the TCP session after it.
func TestMoveBackToQUIC(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	g := newGate(t, r.Addr())
	g.dropUDP.Store(true)
	cfg := agentConfig(t, g.Addr())
	cfg.QUICTimeout = 300 * time.Millisecond
	cfg.QUICProbeMin, cfg.QUICProbeMax = 200*time.Millisecond, 400*time.Millisecond
	a := startAgent(t, cfg, "a:")
	r.waitEvent(t, "lab up")
	if err := a.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if got := a.Transport(); got != TransportTCPYamux {
		t.Fatalf("transport %q with UDP blocked, want %q", got, TransportTCPYamux)
	}

	// An exchange in flight on the TCP session: half sent.
	old, err := r.Dial(ctx, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	old.SetDeadline(time.Now().Add(15 * time.Second))
	if _, ok := old.(*yamuxStream); !ok {
		t.Fatalf("stream %T, want a yamux stream", old)
	}
	if _, err := old.Write([]byte("first half,")); err != nil {
		t.Fatal(err)
	}
	head := make([]byte, len("a:first half,"))
	if _, err := io.ReadFull(old, head); err != nil || string(head) != "a:first half," {
		t.Fatalf("echo %q, %v", head, err)
	}

	g.dropUDP.Store(false)
	r.waitEvent(t, "lab up") // the QUIC session replaced the TCP one, no "down" between
	waitFor(t, "the agent on QUIC", func() bool { return a.Transport() == TransportQUIC })
	if st, _ := r.Agent(testAgent); st.Transport != TransportQUIC {
		t.Fatalf("relay sees transport %q, want quic", st.Transport)
	}
	st, err := r.Dial(ctx, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.(*quicStream); !ok {
		t.Errorf("new exchange on %T, want a QUIC stream", st)
	}
	st.Close()

	// The old exchange goes on where it was.
	if _, err := old.Write([]byte("second half")); err != nil {
		t.Fatalf("write on the TCP stream after the move: %v", err)
	}
	if err := old.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(old)
	if err != nil || string(rest) != "second half" {
		t.Fatalf("rest of the in-flight exchange: %q, %v", rest, err)
	}
	if strings.Contains(r.log.String(), "reason=replaced") {
		t.Error("the relay ended the TCP session before its stream was closed")
	}
	old.Close()
	waitFor(t, "the relay to end the TCP session", func() bool { return r.log.count("reason=replaced") == 1 })
	waitFor(t, "the agent to see it end", func() bool { return a.log.count("the previous session has ended") == 1 })
	if strings.Contains(a.log.String(), "another agent connected with the same name") {
		t.Errorf("the agent took its own move for a name clash:\n%s", a.log)
	}
	if got, err := roundTrip(ctx, r, testAgent, []byte("after")); err != nil || string(got) != "a:after" {
		t.Fatalf("round trip on QUIC: %q, %v", got, err)
	}
	// Ordered events: had the move sent a "down", it would come before this
	// one's.
	a.stop()
	r.waitEvent(t, "lab down")
	a2 := startAgent(t, agentConfig(t, r.Addr()), "b:")
	r.waitEvent(t, "lab up")
	a2.stop()
	r.waitEvent(t, "lab down")
}

// TestRetiredTCPIsNotADrain: a TCP session the agent left for QUIC, still
// finishing an exchange, does not make a failed reconnect look like a
// draining relay's (retried at the shortest pace and logged at debug): when
// the QUIC session dies and the relay cannot be reached, the agent says so
// and backs off.
func TestRetiredTCPIsNotADrain(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	g := newGate(t, r.Addr())
	g.dropUDP.Store(true)
	cfg := agentConfig(t, g.Addr())
	cfg.QUICTimeout = 300 * time.Millisecond
	cfg.QUICProbeMin, cfg.QUICProbeMax = 200*time.Millisecond, 400*time.Millisecond
	a := startAgent(t, cfg, "a:")
	if err := a.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	// An exchange in flight keeps the TCP session retired, not ended,
	// after the move.
	old, err := r.Dial(ctx, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	g.dropUDP.Store(false)
	waitFor(t, "the agent on QUIC", func() bool { return a.Transport() == TransportQUIC })

	// The relay becomes unreachable for new sessions and the QUIC one
	// dies at its idle timeout; the old TCP connection stays.
	g.closeTCP.Store(true)
	g.dropUDP.Store(true)
	waitFor(t, "a failed reconnect", func() bool {
		return a.log.count("cannot connect to relay") > 0 || a.log.count("its replacement does not answer yet") > 0
	})
	if n := a.log.count("its replacement does not answer yet"); n > 0 {
		t.Fatalf("a reconnect after a move to QUIC was taken for a draining relay's (%d times)", n)
	}
	if a.log.count("the previous session has ended") != 0 {
		t.Fatal("the retired TCP session ended: the test no longer covers a failure while it lasts")
	}
}

// TestDrainBound: a replaced session's drain ends when its last stream
// closes, or at the grace bound with the streams still open counted.
func TestDrainBound(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	startAgent(t, agentConfig(t, r.Addr()), "a:")
	r.waitEvent(t, "lab up")
	r.mu.Lock()
	a := r.agents[testAgent].byTag[ReplicaTag(sha256.Sum256([]byte(testToken)))].conns[0]
	r.mu.Unlock()
	st, err := r.Dial(ctx, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if left := a.drain(ctx, 100*time.Millisecond); left != 1 {
		t.Errorf("drain at the bound: %d streams left, want 1", left)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("drain with a 100 ms bound took %v", took)
	}
	if _, err := r.Dial(ctx, testAgent); err == nil {
		t.Error("Dial on a draining session that is still the current one: no error")
	}
	done := make(chan int, 1)
	go func() { done <- a.drain(ctx, time.Minute) }()
	st.Close()
	select {
	case left := <-done:
		if left != 0 {
			t.Errorf("drain after the last stream closed: %d left", left)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not end when the last stream closed")
	}
}

// TestAgentStatelessReset: the agent gave up on a connection (its idle
// timeout fired while the relay's packets were lost on the way) that the
// relay still holds. When the relay next writes on it, the agent's socket
// answers with a stateless reset from the agent's key, so the relay ends it
// at once instead of at its own idle timeout.
func TestAgentStatelessReset(t *testing.T) {
	r := startRelay(t, ServerConfig{})
	g := newGate(t, r.Addr())
	cfg := agentConfig(t, g.Addr())
	cfg.Transport = TransportQUIC
	a := startAgent(t, cfg, "a:")
	r.waitEvent(t, "lab up")
	if err := a.WaitConnected(testCtx(t)); err != nil {
		t.Fatal(err)
	}

	g.dropDown.Store(true)
	waitFor(t, "the agent to time out", func() bool { return !a.Connected() })
	g.dropDown.Store(false)
	// The agent reconnects from the same socket; the relay replaces the old
	// session and sends it a goaway, which only the agent's socket hears.
	r.waitEvent(t, "lab up")
	waitFor(t, "the relay to end the old session on a stateless reset", func() bool {
		return r.log.count(`reason=replaced`) == 1
	})
	if r.log.count(`reason=replaced duration=`) != 1 || r.log.count(`cause="received a stateless reset"`) != 1 {
		t.Errorf("the old session did not end on the agent's stateless reset:\n%s", r.log)
	}
}
