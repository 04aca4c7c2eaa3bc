package tunnel

import (
	"io"
	"strings"
	"testing"
	"time"
)

// A draining relay keeps the agent's session for the streams in flight,
// and the agent connects again at once to the relay's replacement instead
// of waiting MaxBackoff as after "replaced".
func TestRelayDrain(t *testing.T) {
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			ctx := testCtx(t)
			r1 := startRelay(t, ServerConfig{})
			addr := r1.Addr()
			cfg := agentConfig(t, addr)
			cfg.Transport = transport
			cfg.MaxBackoff = time.Hour // a "replaced" wait would outlast the test
			a := startAgent(t, cfg, "a:")
			r1.waitEvent(t, "lab up")

			// A stream in flight across the drain.
			st, err := r1.Dial(ctx, testAgent)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			st.SetDeadline(time.Now().Add(15 * time.Second))
			if _, err := st.Write([]byte("before")); err != nil {
				t.Fatal(err)
			}

			r1.Drain()
			if !r1.Draining() {
				t.Error("Draining() = false after Drain")
			}
			// The agent stops counting the session as its current one.
			waitFor(t, "agent to hear the relay drains", func() bool { return !a.Connected() })
			if _, ok := r1.Agent(testAgent); !ok {
				t.Fatal("the draining relay dropped the agent's session")
			}
			if _, err := st.Write([]byte("+after")); err != nil {
				t.Fatalf("stream in flight cut by the drain: %v", err)
			}
			if err := st.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(st)
			if err != nil || string(got) != "a:before+after" {
				t.Fatalf("stream in flight across the drain: %q, %v; want %q", got, err, "a:before+after")
			}

			r1.Close()
			r1.waitEvent(t, "lab down")
			r2 := startRelay(t, ServerConfig{Listen: addr})
			r2.waitEvent(t, "lab up")
			if got, err := roundTrip(ctx, r2, testAgent, []byte("2")); err != nil || string(got) != "a:2" {
				t.Fatalf("after the replacement came up: %q, %v", got, err)
			}
			if strings.Contains(a.log.String(), "relay replaced this session") {
				t.Error("the agent took the drain for a replacement")
			}
		})
	}
}

// An agent that drains tells the relay, which reports it; the session
// stays up for the streams in flight.
func TestAgentDrain(t *testing.T) {
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			ctx := testCtx(t)
			r := startRelay(t, ServerConfig{})
			cfg := agentConfig(t, r.Addr())
			cfg.Transport = transport
			a := startAgent(t, cfg, "a:")
			r.waitEvent(t, "lab up")
			if r.AgentDraining(testAgent) {
				t.Fatal("AgentDraining before the agent drains")
			}
			if err := a.Drain(); err != nil {
				t.Fatal(err)
			}
			if !a.Draining() {
				t.Error("Client.Draining() = false after Drain")
			}
			waitFor(t, "relay to hear the agent drains", func() bool { return r.AgentDraining(testAgent) })
			if st, ok := r.Agent(testAgent); !ok || !st.Draining {
				t.Errorf("Agent() = %+v, %v; want a draining session", st, ok)
			}
			if got, err := roundTrip(ctx, r, testAgent, []byte("x")); err != nil || string(got) != "a:x" {
				t.Fatalf("stream to a draining agent: %q, %v", got, err)
			}
			if !strings.Contains(r.log.String(), "agent draining") {
				t.Errorf("relay log lacks the agent's drain:\n%s", r.log)
			}
		})
	}
}
