package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/mcptun/mcptun/internal/authguard"
)

func TestTransports(t *testing.T) {
	tests := []struct {
		transport, mux string
		want           string
	}{
		{TransportQUIC, "", TransportQUIC},
		{TransportTCP, "", TransportTCPYamux},
		{TransportQUIC, MuxYamux, TransportQUICYamux},
		{TransportAuto, "", TransportQUIC},
		{TransportAuto, MuxYamux, TransportQUICYamux},
	}
	for _, tt := range tests {
		t.Run(tt.transport+"/"+tt.mux, func(t *testing.T) {
			ctx := testCtx(t)
			r := startRelay(t, ServerConfig{})
			cfg := agentConfig(t, r.Addr())
			cfg.Transport, cfg.Mux = tt.transport, tt.mux
			a := startAgent(t, cfg, "echo:")
			if err := a.WaitConnected(ctx); err != nil {
				t.Fatal(err)
			}
			r.waitEvent(t, "lab up")
			if got := a.Transport(); got != tt.want {
				t.Errorf("agent transport %q, want %q", got, tt.want)
			}
			st, ok := r.Agent(testAgent)
			if !ok {
				t.Fatal("relay does not list the connected agent")
			}
			if st.Transport != tt.want || st.Name != testAgent || st.Remote == "" || st.ConnectedAt.IsZero() {
				t.Errorf("agent status %+v", st)
			}
			if !slices.Equal(st.Servers, cfg.Servers) {
				t.Errorf("offered servers %v, want %v", st.Servers, cfg.Servers)
			}
			if online, offered := r.Offers(testAgent, "wiki"); !online || !offered {
				t.Errorf("Offers(lab, wiki) = %v, %v; want true, true", online, offered)
			}
			if online, offered := r.Offers(testAgent, "nope"); !online || offered {
				t.Errorf("Offers(lab, nope) = %v, %v; want true, false", online, offered)
			}
			if all := r.Agents(); len(all) != 1 || all[0].Name != testAgent {
				t.Errorf("Agents() = %+v", all)
			}

			// Concurrent streams, each echoing data in both directions.
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for i := range 16 {
				wg.Go(func() {
					payload := make([]byte, 64<<10*(i+1))
					rand.Read(payload)
					got, err := roundTrip(ctx, r, testAgent, payload)
					if err != nil {
						errs <- fmt.Errorf("stream %d: %w", i, err)
						return
					}
					want := append([]byte("echo:"), payload...)
					if !bytes.Equal(got, want) {
						errs <- fmt.Errorf("stream %d: got %d bytes back, want %d", i, len(got), len(want))
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}

			a.stop()
			r.waitEvent(t, "lab down")
			if _, ok := r.Agent(testAgent); ok {
				t.Error("agent still listed after it stopped")
			}
			if online, _ := r.Offers(testAgent, "wiki"); online {
				t.Error("Offers says online after the agent stopped")
			}
		})
	}
}

// TestStreamSemantics checks the net.Conn contract on each transport:
// deadlines, Close unblocking a Read, use after Close, and that Close reaches
// the peer.
func TestStreamSemantics(t *testing.T) {
	for _, tt := range []struct{ transport, mux string }{
		{TransportQUIC, ""}, {TransportTCP, ""}, {TransportQUIC, MuxYamux},
	} {
		t.Run(tt.transport+"/"+tt.mux, func(t *testing.T) {
			ctx := testCtx(t)
			r := startRelay(t, ServerConfig{})
			cfg := agentConfig(t, r.Addr())
			cfg.Transport, cfg.Mux = tt.transport, tt.mux
			cfg.Logger, _ = newLog(t, "agent")
			sess, err := Connect(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			r.waitEvent(t, "lab up")

			st, err := r.Dial(ctx, testAgent)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Write([]byte("hi")); err != nil { // QUIC: the agent sees the stream once data flows
				t.Fatal(err)
			}
			peer, err := sess.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			buf := make([]byte, 2)
			if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "hi" {
				t.Fatalf("agent read %q, %v", buf, err)
			}

			// A read deadline times out like a net.Conn's.
			st.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_, err = st.Read(buf)
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read past deadline: %v, want a timeout", err)
			}
			st.SetReadDeadline(time.Time{})

			// Close unblocks a Read in another goroutine.
			readErr := make(chan error, 1)
			go func() {
				_, err := st.Read(buf)
				readErr <- err
			}()
			time.Sleep(20 * time.Millisecond) // let the Read block; the test passes either way
			st.Close()
			select {
			case err := <-readErr:
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("blocked Read after Close: %v, want net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not unblock Read")
			}
			if _, err := st.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Write after Close: %v, want net.ErrClosed", err)
			}
			// The agent sees the end of the stream.
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := peer.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("agent Read after relay Close: %d, %v; want EOF or reset", n, err)
			}

			// Streams the agent opens are refused by the relay.
			own, err := sess.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			own.Write([]byte("unwanted"))
			own.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := own.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("agent-opened stream: read %d, %v; want it closed by the relay", n, err)
			}
			own.Close()
		})
	}
}

func TestBadTokenNoHotLoop(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	cfg := agentConfig(t, r.Addr())
	cfg.Token = "wrong-token"
	cfg.Transport = TransportTCP

	// One attempt: a typed refusal.
	_, err := Connect(ctx, cfg)
	ref := wantRefused(t, err, CodeBadCredential)
	if !strings.Contains(ref.Error(), "bad credential") {
		t.Errorf("error text %q does not say bad credential", ref.Error())
	}
	if strings.Contains(err.Error(), "wrong-token") {
		t.Error("refusal error contains the token")
	}
	waitFor(t, "relay refusal log", func() bool { return r.log.count(`reason="bad token"`) == 1 })

	// Run: after each refusal it waits MaxBackoff, never less.
	clock := newFakeClock()
	cfg.Clock = clock
	cfg.MaxBackoff = time.Hour
	a := startAgent(t, cfg, "")
	for attempt := 2; attempt <= 3; attempt++ {
		w := clock.next(t)
		if w.d < cfg.MaxBackoff {
			t.Fatalf("waits %v after a refusal, want at least MaxBackoff %v", w.d, cfg.MaxBackoff)
		}
		if n := r.log.count(`reason="bad token"`); n != attempt {
			t.Fatalf("relay saw %d refused attempts, want %d", n, attempt)
		}
		w.fire()
	}
	clock.next(t) // third Run attempt refused; Run waits again
	a.stop()
	if got := r.log.count(`reason="bad token"`); got != 4 {
		t.Errorf("relay saw %d attempts, want 4", got)
	}
	if !strings.Contains(a.log.String(), "relay refused: bad credential") {
		t.Errorf("agent log lacks the refusal line:\n%s", a.log)
	}
	if strings.Contains(a.log.String(), "wrong-token") || strings.Contains(r.log.String(), "wrong-token") {
		t.Error("a log contains the token")
	}
	if a.Connected() {
		t.Error("refused agent reports connected")
	}
}

func TestUnknownAgent(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		cfg := agentConfig(t, r.Addr())
		cfg.Name = "ghost"
		cfg.Transport = transport
		_, err := Connect(ctx, cfg)
		// Reported to the agent like a bad token, so names cannot be probed.
		wantRefused(t, err, CodeBadCredential)
	}
	waitFor(t, "relay logs", func() bool {
		return r.log.count(`agent=ghost`) == 2 && r.log.count(`reason="unknown agent"`) == 2
	})
	if _, ok := r.Agent("ghost"); ok {
		t.Error("refused agent is listed")
	}
}

// TestBadHello speaks the protocol by hand to reach the relay's other
// refusals.
func TestBadHello(t *testing.T) {
	ctx := testCtx(t)
	// Every refusal here counts against 127.0.0.1; let them all be checked.
	r := startRelay(t, ServerConfig{AuthGuard: authguard.New(authguard.Config{Burst: 100, What: "agent handshake"})})
	frame := func(body string) []byte {
		var b bytes.Buffer
		b.Write([]byte{0, 0, byte(len(body) >> 8), byte(len(body))})
		b.WriteString(body)
		return b.Bytes()
	}
	tests := []struct {
		name string
		send []byte
		code string
	}{
		{"future version", frame(`{"type":"hello","version":2,"agent":"lab","token":"x"}`), CodeUnsupportedVersion},
		{"not json", frame(`hello`), CodeBadHello},
		{"wrong type", frame(`{"type":"welcome","version":1}`), CodeBadHello},
		{"bad name", frame(`{"type":"hello","version":1,"agent":"a/b","token":"x"}`), CodeBadHello},
		{"no token", frame(`{"type":"hello","version":1,"agent":"lab"}`), CodeBadHello},
		{"bad kind", frame(`{"type":"hello","version":1,"agent":"lab","token":"` + testToken + `","servers":[{"name":"s","kind":"ftp"}]}`), CodeBadHello},
		{"unknown auth", frame(`{"type":"hello","version":1,"agent":"lab","auth":"kerberos"}`), CodeBadHello},
		{"short public key", frame(`{"type":"hello","version":1,"agent":"lab","auth":"ed25519","public_key":"AAAA","signature":"` + strings.Repeat("A", 86) + `=="}`), CodeBadHello},
		{"no signature", frame(`{"type":"hello","version":1,"agent":"lab","auth":"ed25519","public_key":"` + strings.Repeat("A", 43) + `="}`), CodeBadHello},
		{"token with a key", frame(`{"type":"hello","version":1,"agent":"lab","auth":"ed25519","token":"` + testToken + `","public_key":"` + strings.Repeat("A", 43) + `=","signature":"` + strings.Repeat("A", 86) + `=="}`), CodeBadHello},
		{"signature with a token", frame(`{"type":"hello","version":1,"agent":"lab","token":"` + testToken + `","signature":"AAAA"}`), CodeBadHello},
		{"forged signature", frame(`{"type":"hello","version":1,"agent":"lab","auth":"ed25519","public_key":"` + strings.Repeat("A", 43) + `=","signature":"` + strings.Repeat("A", 86) + `=="}`), CodeBadCredential},
		{"empty frame", []byte{0, 0, 0, 0}, CodeBadHello},
		{"huge frame", []byte{0xff, 0, 0, 0}, CodeBadHello},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := agentConfig(t, r.Addr()).normalize()
			if err != nil {
				t.Fatal(err)
			}
			cfg.Transport = TransportTCP
			sess, err := dial(ctx, &cfg, cfg.Logger, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			ctl, err := sess.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ctl.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := ctl.Write(tt.send); err != nil {
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
			if a.Type != typeRefused || a.Code != tt.code || a.Message == "" {
				t.Errorf("answer %+v, want refused with code %s and a message", a, tt.code)
			}
		})
	}
}

// TestHandshakeTimeout: a peer that connects and says nothing loses its
// slot after HandshakeTimeout.
func TestHandshakeTimeout(t *testing.T) {
	r := startRelay(t, ServerConfig{HandshakeTimeout: 200 * time.Millisecond})
	_, pin, _ := testCert(t)
	tlsCfg, err := ClientTLS("127.0.0.1", "", pin)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("tcp", func(t *testing.T) {
		c, err := tls.Dial("tcp", r.Addr(), withALPN(tlsCfg, ALPN))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, c) // yamux may send pings; then the relay hangs up
		if err != nil {
			t.Fatalf("relay did not close the silent connection: %v", err)
		}
	})
	t.Run("quic", func(t *testing.T) {
		ctx := testCtx(t)
		conn, err := quic.DialAddr(ctx, r.Addr(), withALPN(tlsCfg, ALPN), quicConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseWithError(0, "")
		select {
		case <-conn.Context().Done():
		case <-time.After(10 * time.Second):
			t.Fatal("relay did not close the silent QUIC connection")
		}
	})
}

func TestTLSVerification(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	ca := caFile(t)
	_, pin, _ := testCert(t)
	otherPin := strings.Repeat("ab", 32)

	tests := []struct {
		name                string
		serverName, ca, pin string
		ok                  bool
		errContains         string
	}{
		{name: "ca file", serverName: "127.0.0.1", ca: ca, ok: true},
		{name: "ca file, default server name", ca: ca, ok: true},
		{name: "pin", serverName: "127.0.0.1", pin: pin, ok: true},
		{name: "pin upper case, other name", serverName: "relay.example", pin: strings.ToUpper(pin), ok: true},
		{name: "wrong pin", serverName: "127.0.0.1", pin: otherPin, errContains: "want pinned " + otherPin},
		{name: "system roots", serverName: "127.0.0.1", errContains: "certificate"},
		{name: "ca file, wrong name", serverName: "relay.example", ca: ca, errContains: "relay.example"},
	}
	for _, tt := range tests {
		for _, transport := range []string{TransportQUIC, TransportTCP} {
			t.Run(tt.name+"/"+transport, func(t *testing.T) {
				tlsCfg, err := ClientTLS(tt.serverName, tt.ca, tt.pin)
				if err != nil {
					t.Fatal(err)
				}
				cfg := agentConfig(t, r.Addr())
				cfg.TLSConfig = tlsCfg
				cfg.Transport = transport
				sess, err := Connect(ctx, cfg)
				if tt.ok {
					if err != nil {
						t.Fatal(err)
					}
					r.waitEvent(t, "lab up")
					sess.Close()
					r.waitEvent(t, "lab down")
					return
				}
				if err == nil {
					sess.Close()
					t.Fatal("Connect succeeded, want a certificate error")
				}
				var ref *RefusedError
				if errors.As(err, &ref) {
					t.Fatalf("got a refusal %v, want a TLS error", err)
				}
				if !strings.Contains(err.Error(), tt.errContains) {
					t.Errorf("error %q does not mention %q", err, tt.errContains)
				}
			})
		}
	}
}

func TestClientTLSErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := dir + "/not.pem"
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	tests := []struct {
		name, ca, pin, want string
	}{
		{"short pin", "", "abcd", "64 hex digits"},
		{"non-hex pin", "", strings.Repeat("zz", 32), "not hex"},
		{"missing ca", dir + "/nope.pem", "", "read ca_file"},
		{"no certs in ca", notPEM, "", "no PEM certificates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ClientTLS("x", tt.ca, tt.pin)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// TestAutoFallback: UDP reaches a socket that swallows every datagram, so
// QUIC never connects and the agent must settle on TCP.
func TestAutoFallback(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{DisableQUIC: true})
	udp, err := net.ListenPacket("udp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer udp.Close()
	var dropped sync.WaitGroup
	dropped.Add(1)
	wg.Go(func() {
		buf := make([]byte, 2048)
		first := true
		for {
			if _, _, err := udp.ReadFrom(buf); err != nil {
				return
			}
			if first {
				dropped.Done()
				first = false
			}
		}
	})

	cfg := agentConfig(t, r.Addr())
	cfg.QUICTimeout = 300 * time.Millisecond
	a := startAgent(t, cfg, "tcp:")
	if err := a.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	dropped.Wait() // QUIC really was tried
	if got := a.Transport(); got != TransportTCPYamux {
		t.Fatalf("transport %q, want %q", got, TransportTCPYamux)
	}
	if !strings.Contains(a.log.String(), "falling back to TLS over TCP") {
		t.Errorf("agent log does not mention the fallback:\n%s", a.log)
	}
	got, err := roundTrip(ctx, r, testAgent, []byte("ping"))
	if err != nil || string(got) != "tcp:ping" {
		t.Fatalf("round trip: %q, %v", got, err)
	}

	// The relay restarts (UDP still blocked): the agent reconnects over
	// TCP at once instead of waiting for QUIC again.
	addr := r.Addr()
	r.Close()
	waitFor(t, "agent to notice", func() bool { return !a.Connected() })
	r2 := startRelay(t, ServerConfig{Listen: addr, DisableQUIC: true})
	if err := a.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := roundTrip(ctx, r2, testAgent, []byte("again")); err != nil || string(got) != "tcp:again" {
		t.Fatalf("after restart: %q, %v", got, err)
	}
	if n := a.log.count("falling back to TLS over TCP"); n != 1 {
		t.Errorf("QUIC tried again on reconnect: %d fallbacks logged, want 1:\n%s", n, a.log)
	}
}

func TestRelayRestart(t *testing.T) {
	for _, transport := range []string{TransportAuto, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			ctx := testCtx(t)
			r1 := startRelay(t, ServerConfig{})
			addr := r1.Addr()
			cfg := agentConfig(t, addr)
			cfg.Transport = transport
			a := startAgent(t, cfg, "a:")
			r1.waitEvent(t, "lab up")
			if got, err := roundTrip(ctx, r1, testAgent, []byte("1")); err != nil || string(got) != "a:1" {
				t.Fatalf("before restart: %q, %v", got, err)
			}

			r1.Close()
			r1.waitEvent(t, "lab down")
			waitFor(t, "agent to notice", func() bool { return !a.Connected() })

			r2 := startRelay(t, ServerConfig{Listen: addr})
			r2.waitEvent(t, "lab up")
			if err := a.WaitConnected(ctx); err != nil {
				t.Fatal(err)
			}
			if got, err := roundTrip(ctx, r2, testAgent, []byte("2")); err != nil || string(got) != "a:2" {
				t.Fatalf("after restart: %q, %v", got, err)
			}
		})
	}
}

func TestDialOffline(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	if _, err := r.Dial(ctx, testAgent); !errors.Is(err, ErrAgentOffline) {
		t.Fatalf("Dial before connect: %v, want ErrAgentOffline", err)
	}
	if _, err := r.Dial(ctx, "nobody"); !errors.Is(err, ErrAgentOffline) {
		t.Fatalf("Dial unknown agent: %v, want ErrAgentOffline", err)
	}
	a := startAgent(t, agentConfig(t, r.Addr()), "")
	r.waitEvent(t, "lab up")
	st, err := r.Dial(ctx, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	a.stop()
	r.waitEvent(t, "lab down")
	if _, err := r.Dial(ctx, testAgent); !errors.Is(err, ErrAgentOffline) {
		t.Fatalf("Dial after disconnect: %v, want ErrAgentOffline", err)
	}
}

func TestSessionReplacement(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	clock := newFakeClock()
	cfg1 := agentConfig(t, r.Addr())
	cfg1.Clock = clock
	cfg1.MaxBackoff = time.Hour
	a1 := startAgent(t, cfg1, "one:")
	r.waitEvent(t, "lab up")
	first, _ := r.Agent(testAgent)

	cfg2 := agentConfig(t, r.Addr())
	cfg2.Transport = TransportTCP
	a2 := startAgent(t, cfg2, "two:")
	r.waitEvent(t, "lab up") // the newer session takes over; no "down" between
	if err := a2.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}

	w := clock.next(t) // a1 was told and waits before trying again
	if w.d != cfg1.MaxBackoff {
		t.Errorf("replaced agent waits %v, want MaxBackoff %v", w.d, cfg1.MaxBackoff)
	}
	if a1.Connected() || !a2.Connected() {
		t.Errorf("connected: first %v, second %v; want false, true", a1.Connected(), a2.Connected())
	}
	if !strings.Contains(a1.log.String(), "relay replaced this session") {
		t.Errorf("first agent's log lacks the replacement:\n%s", a1.log)
	}
	waitFor(t, "relay replacement log", func() bool { return r.log.count("agent session replaced") == 1 })
	now, _ := r.Agent(testAgent)
	if now.Transport != TransportTCPYamux || now.Remote == first.Remote {
		t.Errorf("relay status %+v after replacement of %+v", now, first)
	}
	got, err := roundTrip(ctx, r, testAgent, []byte("x"))
	if err != nil || string(got) != "two:x" {
		t.Fatalf("round trip after replacement: %q, %v", got, err)
	}
	// The replacement sent no "down": events are ordered, so one would
	// come before the "down" of a2 leaving and then stand where the next
	// "up" is expected.
	a2.stop()
	r.waitEvent(t, "lab down")
	cfg3 := agentConfig(t, r.Addr())
	cfg3.Transport = TransportTCP
	startAgent(t, cfg3, "three:")
	r.waitEvent(t, "lab up")
}

func TestServerCloseEndsSessions(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	cfg := agentConfig(t, r.Addr())
	cfg.Logger, _ = newLog(t, "agent")
	sess, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	r.waitEvent(t, "lab up")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r.waitEvent(t, "lab down")
	select {
	case <-sess.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("agent session outlived the relay")
	}
	if len(r.Agents()) != 0 {
		t.Error("agents listed after Close")
	}
}

func TestListenerClose(t *testing.T) {
	ln := newListener("x")
	errc := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		errc <- err
	}()
	ln.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Accept")
	}
	if ln.deliver(nil, nil) {
		t.Error("deliver succeeded on a closed listener")
	}
	if ln.Addr().String() != "mcptun-agent:x" {
		t.Errorf("Addr %q", ln.Addr())
	}
}

func TestNewClientValidation(t *testing.T) {
	base := func() ClientConfig {
		return ClientConfig{Name: "lab", Address: "127.0.0.1:1", Token: "t", TLSConfig: &tls.Config{}}
	}
	tests := []struct {
		name string
		mod  func(*ClientConfig)
		want string
	}{
		{"ok", func(*ClientConfig) {}, ""},
		{"bad name", func(c *ClientConfig) { c.Name = "-x" }, "invalid agent name"},
		{"no port", func(c *ClientConfig) { c.Address = "relay" }, "host:port"},
		{"no host", func(c *ClientConfig) { c.Address = ":443" }, "host:port"},
		{"no tls", func(c *ClientConfig) { c.TLSConfig = nil }, "TLSConfig"},
		{"no token", func(c *ClientConfig) { c.Token = "" }, "no credential"},
		{"token and key", func(c *ClientConfig) { c.Key = newKey(t) }, "several credentials"},
		{"token and certificate", func(c *ClientConfig) { c.Certificate = validClientCert(t) }, "several credentials"},
		{"short key", func(c *ClientConfig) { c.Token, c.Key = "", newKey(t)[:10] }, "10 bytes"},
		{"certificate without key", func(c *ClientConfig) { c.Token, c.Certificate = "", &tls.Certificate{Certificate: [][]byte{{1}}} }, "private key"},
		{"transport", func(c *ClientConfig) { c.Transport = "udp" }, `transport "udp"`},
		{"mux", func(c *ClientConfig) { c.Mux = "h2" }, `mux "h2"`},
		{"backoff", func(c *ClientConfig) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }, "exceeds MaxBackoff"},
		{"server kind", func(c *ClientConfig) { c.Servers = []OfferedServer{{Name: "a", Kind: "x"}} }, "kind"},
		{"dup server", func(c *ClientConfig) {
			c.Servers = []OfferedServer{{Name: "a", Kind: KindHTTP}, {Name: "a", Kind: KindStdio}}
		}, "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.mod(&cfg)
			c, err := NewClient(cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.cfg.TLSConfig.ServerName != "127.0.0.1" || c.cfg.Transport != TransportAuto || c.cfg.Mux != MuxNative {
					t.Errorf("defaults not applied: %+v", c.cfg)
				}
				if cfg.TLSConfig.ServerName != "" {
					t.Error("NewClient modified the caller's tls.Config")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestListenValidation(t *testing.T) {
	cert, _, _ := testCert(t)
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	h := sha256.Sum256([]byte("x"))
	tests := []struct {
		name string
		cfg  ServerConfig
		want string
	}{
		{"no addr", ServerConfig{TLSConfig: tlsCfg}, "no address"},
		{"bad addr", ServerConfig{Listen: "nope", TLSConfig: tlsCfg}, "missing port"},
		{"no tls", ServerConfig{Listen: "127.0.0.1:0"}, "TLSConfig"},
		{"no cert", ServerConfig{Listen: "127.0.0.1:0", TLSConfig: &tls.Config{}}, "certificate"},
		{"nothing enabled", ServerConfig{Listen: "127.0.0.1:0", TLSConfig: tlsCfg, DisableQUIC: true, DisableTCP: true}, "both"},
		{"bad agent", ServerConfig{Listen: "127.0.0.1:0", TLSConfig: tlsCfg, Agents: []AgentCredential{{Name: "a b"}}}, "invalid agent name"},
		{"dup agent", ServerConfig{Listen: "127.0.0.1:0", TLSConfig: tlsCfg, Agents: []AgentCredential{{Name: "a", TokenSHA256: h}, {Name: "a", TokenSHA256: h}}}, "one token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Listen(context.Background(), tt.cfg)
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

// TestListenSamePort: port 0 picks one port for UDP and TCP, and a taken
// port is an error naming it.
func TestListenSamePort(t *testing.T) {
	r := startRelay(t, ServerConfig{})
	_, port, _ := net.SplitHostPort(r.Addr())
	if port == "0" {
		t.Fatalf("Addr %q has no port", r.Addr())
	}
	if r.tcpLn.Addr().(*net.TCPAddr).Port != r.udpConn.LocalAddr().(*net.UDPAddr).Port {
		t.Fatalf("tcp %v and udp %v differ", r.tcpLn.Addr(), r.udpConn.LocalAddr())
	}
	cert, _, _ := testCert(t)
	_, err := Listen(context.Background(), ServerConfig{Listen: r.Addr(), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if err == nil || !strings.Contains(err.Error(), r.Addr()) {
		t.Fatalf("second Listen on %s: %v, want an error naming the address", r.Addr(), err)
	}
}

func TestListenContextCancel(t *testing.T) {
	cert, _, _ := testCert(t)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Listen(ctx, ServerConfig{Listen: "127.0.0.1:0", TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	waitFor(t, "listener to close", func() bool {
		c, err := net.Dial("tcp", s.Addr())
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	s.Close()
}

func TestRunTwice(t *testing.T) {
	r := startRelay(t, ServerConfig{})
	a := startAgent(t, agentConfig(t, r.Addr()), "")
	if err := a.WaitConnected(testCtx(t)); err != nil { // the first Run is under way
		t.Fatal(err)
	}
	if err := a.Run(context.Background()); err == nil {
		t.Fatal("second Run succeeded")
	}
}

// fakeClock lets a test see and release every backoff wait.
type fakeClock struct {
	waits chan fakeWait
}

type fakeWait struct {
	d  time.Duration
	ch chan time.Time
}

func (w fakeWait) fire() { w.ch <- time.Time{} }

func newFakeClock() *fakeClock { return &fakeClock{waits: make(chan fakeWait, 100)} }

func (c *fakeClock) Now() time.Time { return time.Unix(0, 0) }

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	w := fakeWait{d: d, ch: make(chan time.Time, 1)}
	c.waits <- w
	return w.ch
}

func (c *fakeClock) next(t *testing.T) fakeWait {
	t.Helper()
	select {
	case w := <-c.waits:
		return w
	case <-time.After(10 * time.Second):
		t.Fatal("the client never waited")
		return fakeWait{}
	}
}
