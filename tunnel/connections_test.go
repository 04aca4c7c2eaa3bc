package tunnel

import (
	"net"
	"strings"
	"testing"
	"time"
)

// Several tunnels of one agent process to one relay (relay.connections
// through a load balancer that sent both to the same relay) serve side
// by side: the relay pools them under the replica, replaces a tunnel
// only with the same process's same tunnel, and a new process with the
// credential (a restart) replaces them all.
func TestReplicaConnectionsPool(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	cfg := agentConfig(t, r.Addr())
	cfg.Instance = "proc1"
	c0 := startAgent(t, cfg, "c0:")
	r.waitEvent(t, "lab up")
	cfg.Conn = 1
	c1 := startAgent(t, cfg, "c1:")
	r.waitEvent(t, "lab up")

	st, ok := r.Agent(testAgent)
	if !ok || len(st.Replicas) != 1 || st.Replicas[0].Connections != 2 {
		t.Fatalf("Agent() = %+v, %v; want one replica with two connections", st, ok)
	}
	if n := r.log.count("agent session replaced"); n != 0 {
		t.Fatalf("the second tunnel of the process replaced the first (%d times)", n)
	}
	// Streams go to each tunnel in turn.
	seen := map[string]bool{}
	for range 4 {
		got, err := roundTrip(ctx, r, testAgent, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		seen[string(got)] = true
	}
	if !seen["c0:x"] || !seen["c1:x"] {
		t.Fatalf("streams reached %v, want both tunnels", seen)
	}

	// One tunnel going leaves the other serving.
	c0.stop()
	r.waitEvent(t, "lab up") // still up: the pool shrank
	waitFor(t, "one connection left", func() bool {
		st, ok := r.Agent(testAgent)
		return ok && st.Replicas[0].Connections == 1
	})
	if got, err := roundTrip(ctx, r, testAgent, []byte("y")); err != nil || string(got) != "c1:y" {
		t.Fatalf("after one tunnel left: %q, %v", got, err)
	}

	// Another process with the credential replaces the pool.
	cfg.Instance, cfg.Conn = "proc2", 0
	startAgent(t, cfg, "p2:")
	r.waitEvent(t, "lab up")
	waitFor(t, "the old process told it was replaced", func() bool {
		return strings.Contains(c1.log.String(), "replaced")
	})
	if got, err := roundTrip(ctx, r, testAgent, []byte("z")); err != nil || string(got) != "p2:z" {
		t.Fatalf("after the new process: %q, %v", got, err)
	}
}

// relay.connections through one address opens that many tunnels once
// the relay says it is one of a fleet, and they stay up together at one
// relay (none is stopped as a duplicate); a lone relay gets one tunnel.
func TestMultiConnections(t *testing.T) {
	for _, fleet := range []bool{true, false} {
		t.Run(map[bool]string{true: "fleet", false: "lone relay"}[fleet], func(t *testing.T) {
			ctx := testCtx(t)
			r := startRelay(t, ServerConfig{Fleet: fleet})
			_, port, _ := net.SplitHostPort(r.Addr())
			dns := &fakeDNS{}
			dns.set("relays.test", "127.0.0.1")
			m, lb := startMulti(t, MultiConfig{Client: agentConfig(t, ""), Addresses: []string{"relays.test:" + port},
				Connections: 2, Resolver: dns, ResolveInterval: 20 * time.Millisecond}, "a:")
			if err := m.WaitConnected(ctx, 1); err != nil {
				t.Fatal(err)
			}
			// Several syncs later, the number of tunnels is settled.
			n := dns.count()
			waitFor(t, "five more lookups", func() bool { return dns.count() >= n+5 })
			want := 1
			if fleet {
				want = 2
				if err := m.WaitConnected(ctx, 2); err != nil {
					t.Fatal(err)
				}
			}
			if got := len(m.Status()); got != want {
				t.Fatalf("%d tunnels, want %d: %+v", got, want, m.Status())
			}
			waitFor(t, "the connections at the relay", func() bool {
				st, ok := r.Agent(testAgent)
				return ok && len(st.Replicas) == 1 && st.Replicas[0].Connections == want
			})
			if n := r.log.count("agent session replaced"); n != 0 {
				t.Fatalf("the relay replaced the agent's session %d times", n)
			}
			if strings.Contains(lb.String(), "two addresses lead to one relay") {
				t.Fatal("a pooled tunnel was stopped as a duplicate")
			}
			if got, err := roundTrip(ctx, r, testAgent, []byte("x")); err != nil || string(got) != "a:x" {
				t.Fatalf("through the relay: %q, %v", got, err)
			}
		})
	}
}
