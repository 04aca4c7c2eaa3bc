package tunnel

import (
	"crypto/sha256"
	"io"
	"strings"
	"testing"
	"time"
)

const testToken2 = "secret-lab-token-2"

// replicaRelay is a relay that knows agent "lab" with two tokens, one per
// replica.
func replicaRelay(t *testing.T) (r *relay, tagA, tagB string) {
	sumA, sumB := sha256.Sum256([]byte(testToken)), sha256.Sum256([]byte(testToken2))
	r = startRelay(t, ServerConfig{Agents: []AgentCredential{
		{Name: testAgent, TokenSHA256: sumA}, {Name: testAgent, TokenSHA256: sumB},
	}})
	return r, ReplicaTag(sumA), ReplicaTag(sumB)
}

// dialReplica sends "x" to the replica tagged tag and returns the echo
// server's prefix ("a:" and so on), or "" if the exchange failed.
func dialReplica(t *testing.T, r *relay, tag string) string {
	t.Helper()
	ctx := testCtx(t)
	st, err := r.DialReplica(ctx, testAgent, tag)
	if err != nil {
		return ""
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(10 * time.Second))
	// A QUIC stream reaches the agent with its first byte.
	if _, err := st.Write([]byte("x")); err != nil {
		return ""
	}
	st.CloseWrite()
	b, err := io.ReadAll(st)
	if err != nil || !strings.HasSuffix(string(b), "x") {
		return "" // a session that just ended
	}
	return strings.TrimSuffix(string(b), "x")
}

// Two agents with a token each serve one name side by side; new work goes
// to each in turn, a tag reaches its replica, and a replica's end leaves
// the other serving while its own sessions read as gone.
func TestReplicasServeSideBySide(t *testing.T) {
	r, tagA, tagB := replicaRelay(t)
	a := startAgent(t, agentConfig(t, r.Addr()), "a:")
	r.waitEvent(t, "lab up")
	cfgB := agentConfig(t, r.Addr())
	cfgB.Token = testToken2
	b := startAgent(t, cfgB, "b:")
	r.waitEvent(t, "lab up")

	st, ok := r.Agent(testAgent)
	if !ok || len(st.Replicas) != 2 {
		t.Fatalf("Agent() = %+v, %v; want two replicas", st, ok)
	}
	tags := map[string]bool{}
	for _, rs := range st.Replicas {
		tags[rs.Tag] = true
		if rs.Remote == "" || rs.Transport != TransportQUIC || rs.ConnectedAt.IsZero() || rs.Draining {
			t.Errorf("replica status %+v: want remote, quic, connected since, not draining", rs)
		}
	}
	if !tags[tagA] || !tags[tagB] {
		t.Fatalf("replica tags %v, want %s and %s", tags, tagA, tagB)
	}
	if got := dialReplica(t, r, tagA); got != "a:" {
		t.Errorf("replica %s answered %q, want a:", tagA, got)
	}
	if got := dialReplica(t, r, tagB); got != "b:" {
		t.Errorf("replica %s answered %q, want b:", tagB, got)
	}
	// New work alternates.
	seen := map[string]int{}
	for range 6 {
		tag, rt := r.Route(testAgent, "git", "")
		if rt != RouteOK {
			t.Fatalf("Route new work: %v", rt)
		}
		seen[tag]++
	}
	if seen[tagA] != 3 || seen[tagB] != 3 {
		t.Errorf("new work spread %v, want 3 each", seen)
	}
	if _, rt := r.Route(testAgent, "nosuch", ""); rt != RouteOffline {
		t.Errorf("Route to a server no replica offers: %v, want RouteOffline", rt)
	}

	// A drains: new work goes to B only, A's sessions still reach A.
	if err := a.Drain(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "relay to hear replica A drains", func() bool {
		st, _ := r.Agent(testAgent)
		for _, rs := range st.Replicas {
			if rs.Tag == tagA {
				return rs.Draining
			}
		}
		return false
	})
	if r.AgentDraining(testAgent) {
		t.Error("AgentDraining with one replica of two draining")
	}
	for range 4 {
		if tag, rt := r.Route(testAgent, "git", ""); rt != RouteOK || tag != tagB {
			t.Errorf("new work with A draining went to %q (%v), want %s", tag, rt, tagB)
		}
	}
	if tag, rt := r.Route(testAgent, "git", tagA); rt != RouteOK || tag != tagA {
		t.Errorf("A's session with A draining: %q (%v), want A", tag, rt)
	}

	// B ends: A's sessions go on, B's are gone, new work finds only a
	// draining replica.
	b.stop()
	waitFor(t, "B's session to end", func() bool {
		st, _ := r.Agent(testAgent)
		return len(st.Replicas) == 1
	})
	if _, rt := r.Route(testAgent, "git", tagB); rt != RouteSessionGone {
		t.Errorf("B's session after B ended: %v, want RouteSessionGone", rt)
	}
	if _, rt := r.Route(testAgent, "git", "0badbeef"); rt != RouteSessionGone {
		t.Errorf("a tag no replica has: %v, want RouteSessionGone", rt)
	}
	if _, rt := r.Route(testAgent, "git", ""); rt != RouteDraining {
		t.Errorf("new work with only a draining replica: %v, want RouteDraining", rt)
	}
	if !r.AgentDraining(testAgent) {
		t.Error("AgentDraining = false with every replica draining")
	}
	a.stop()
	waitFor(t, "A's session to end", func() bool { _, ok := r.Agent(testAgent); return !ok })
	if _, rt := r.Route(testAgent, "git", tagA); rt != RouteOffline {
		t.Errorf("a session with no replica connected: %v, want RouteOffline (as for one agent)", rt)
	}
}

// A second connection with a replica's credential replaces that replica's
// session only; one with a credential not listed is refused.
func TestReplicaReplacedPerCredential(t *testing.T) {
	r, tagA, tagB := replicaRelay(t)
	a := startAgent(t, agentConfig(t, r.Addr()), "a:")
	r.waitEvent(t, "lab up")
	cfgB := agentConfig(t, r.Addr())
	cfgB.Token = testToken2
	startAgent(t, cfgB, "b:")
	r.waitEvent(t, "lab up")
	before, _ := r.Agent(testAgent)
	var bSince time.Time
	for _, rs := range before.Replicas {
		if rs.Tag == tagB {
			bSince = rs.ConnectedAt
		}
	}

	// The old A is stopped first: two live processes with one token take
	// the session from each other in turn, as one name did before replicas.
	a.stop()
	startAgent(t, agentConfig(t, r.Addr()), "c:")
	waitFor(t, "the new process to hold replica A", func() bool { return dialReplica(t, r, tagA) == "c:" })
	if got := dialReplica(t, r, tagB); got != "b:" {
		t.Errorf("replica B answered %q after A was replaced, want b:", got)
	}
	after, _ := r.Agent(testAgent)
	if len(after.Replicas) != 2 {
		t.Fatalf("replicas after A's replacement: %+v, want 2", after.Replicas)
	}
	for _, rs := range after.Replicas {
		if rs.Tag == tagB && !rs.ConnectedAt.Equal(bSince) {
			t.Errorf("replica B reconnected (since %v, was %v): a new session of A replaced it", rs.ConnectedAt, bSince)
		}
	}

	cfgX := agentConfig(t, r.Addr())
	cfgX.Token = "not-listed"
	_, err := Connect(testCtx(t), cfgX)
	wantRefused(t, err, CodeBadCredential)
	if st, _ := r.Agent(testAgent); len(st.Replicas) != 2 {
		t.Errorf("replicas after a refused credential: %+v, want 2", st.Replicas)
	}
}
