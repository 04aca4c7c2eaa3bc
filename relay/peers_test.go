package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// noAgents is a relay that holds no tunnel at all.
type noAgents struct{}

func (noAgents) Offers(agent, server string) (bool, bool) { return false, false }
func (noAgents) Dial(ctx context.Context, agent string) (net.Conn, error) {
	return nil, errors.New("no agents here")
}

// staticPeers is a fleet whose registry says addr holds dc1 (every
// replica tag in tags, any tag if tags is nil); links are plain TCP (the
// cluster package authenticates them).
type staticPeers struct {
	mu    sync.Mutex
	first string // listed before addr when set
	addr  string
	tags  []string
	dials int
}

func (p *staticPeers) Lookup(agent, tag string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if agent != "dc1" || p.addr == "" {
		return nil
	}
	if tag != "" && p.tags != nil {
		found := false
		for _, t := range p.tags {
			found = found || t == tag
		}
		if !found {
			return nil
		}
	}
	if p.first != "" {
		return []string{p.first, p.addr}
	}
	return []string{p.addr}
}

func (p *staticPeers) Dial(ctx context.Context, addr string) (net.Conn, error) {
	p.mu.Lock()
	p.dials++
	p.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// A relay without the agent's tunnel forwards to the peer relay holding
// it: the client it verified reaches the agent (a client's own
// X-Mcptun-Client does not), the peer routes TAG.ID to its replica and
// tags new sessions, the answer names the peer in X-Mcptun-Via; nobody
// holding the agent is agent_offline, a peer that cannot be reached
// peer_unreachable, and a peer never forwards again (no loops). On the
// fast path and on net/http's.
func TestPeerForwarding(t *testing.T) {
	for _, path := range []struct{ name, extra string }{
		{"fast", "X-Path: fast"},
		{"net/http", "Connection: X-Force"},
	} {
		t.Run(path.name, func(t *testing.T) {
			// Relay B holds dc1 (two replicas) and serves its peers; it
			// knows relay A as a peer too, which must never be used.
			backToA := &staticPeers{}
			set, hb, _ := newReplicaHandler(t, func(c *Config) { c.Name = "relay-b"; c.Peers = backToA })
			peerSrv := httptest.NewServer(hb.PeerHandler())
			t.Cleanup(peerSrv.Close)

			toB := &staticPeers{addr: peerSrv.Listener.Addr().String(), tags: replicaTags}
			ha, err := NewHandler(Config{Agents: noAgents{}, KnownAgents: []string{"dc1"}, Name: "relay-a", Peers: toB,
				Clients: []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"*/*"}}}})
			require.NoError(t, err)
			addrA, _ := startFront(t, ha, nil)
			backToA.mu.Lock()
			backToA.addr = addrA // relay A's front: B must not go there
			backToA.mu.Unlock()

			sids := map[string]string{}
			for range 2 {
				r := post(t, addrA, path.extra, "X-Mcptun-Client: forged")
				require.Equal(t, http.StatusOK, r.StatusCode)
				require.Equal(t, "relay-b", r.Header.Get(ViaHeader))
				require.Equal(t, "ci", r.Header.Get("X-Got-Client"), "the client relay A verified, not the one it claimed")
				tag := r.Header.Get("X-Replica")
				require.Equal(t, tag+".sess-"+tag[:1], r.Header.Get("Mcp-Session-Id"))
				sids[tag] = r.Header.Get("Mcp-Session-Id")
			}
			require.Len(t, sids, 2, "new sessions spread over the peer's replicas")
			for tag, sid := range sids {
				r := post(t, addrA, path.extra, "Mcp-Session-Id: "+sid)
				require.Equal(t, http.StatusOK, r.StatusCode)
				require.Equal(t, tag, r.Header.Get("X-Replica"))
				require.Equal(t, "sess-"+tag[:1], r.Header.Get("X-Got-Session"))
			}
			r, body := postBody(t, addrA, path.extra, "Mcp-Session-Id: cccccccc.x")
			require.Equal(t, http.StatusNotFound, r.StatusCode, "a replica no relay holds, while others are up")
			require.Contains(t, body, `"reason":"session_not_found"`)

			// B holds dc1 no more but is still listed (a stale entry):
			// it answers agent_offline itself and never forwards back.
			backToA.mu.Lock()
			before := backToA.dials
			backToA.mu.Unlock()
			set.mu.Lock()
			set.gone["aaaaaaaa"], set.gone["bbbbbbbb"] = true, true
			set.mu.Unlock()
			r, body = postBody(t, addrA, path.extra)
			require.Equal(t, http.StatusServiceUnavailable, r.StatusCode)
			require.Contains(t, body, `"reason":"agent_offline"`)
			backToA.mu.Lock()
			require.Equal(t, before, backToA.dials, "the peer forwarded a forwarded exchange")
			backToA.mu.Unlock()

			// Nobody holds dc1; then the holder cannot be reached.
			toB.mu.Lock()
			toB.addr = ""
			toB.mu.Unlock()
			r, body = postBody(t, addrA, path.extra)
			require.Equal(t, http.StatusServiceUnavailable, r.StatusCode)
			require.Contains(t, body, `"reason":"agent_offline"`)
			require.Equal(t, "5", r.Header.Get("Retry-After"))
			dead, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			deadAddr := dead.Addr().String()
			dead.Close()
			toB.mu.Lock()
			toB.addr = deadAddr
			toB.mu.Unlock()
			r, body = postBody(t, addrA, path.extra)
			require.Equal(t, http.StatusServiceUnavailable, r.StatusCode)
			require.Contains(t, body, `"reason":"peer_unreachable"`)

			// The dead relay listed first (its registry entry has not
			// expired yet) and a live one holding the agent: the link
			// that just failed is skipped, the live peer serves.
			set.mu.Lock()
			set.gone = map[string]bool{}
			set.mu.Unlock()
			toB.mu.Lock()
			toB.first, toB.addr = deadAddr, peerSrv.Listener.Addr().String()
			toB.mu.Unlock()
			for range 3 {
				r = post(t, addrA, path.extra)
				require.Equal(t, http.StatusOK, r.StatusCode, "the live peer after the dead one failed")
			}
		})
	}
}

// A forwarded answer streams: each SSE event reaches the client through
// both relays before the agent writes the next, on both paths of the
// client's relay.
func TestPeerForwardingStreamsSSE(t *testing.T) {
	for _, path := range []struct{ name, extra string }{
		{"fast", "X-Path: fast"},
		{"net/http", "Connection: X-Force"},
	} {
		t.Run(path.name, func(t *testing.T) {
			next := make(chan struct{})
			b := newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				for i := range 3 {
					fmt.Fprintf(w, "id: %d\ndata: {\"n\":%d}\n\n", i, i)
					w.(http.Flusher).Flush()
					select {
					case <-next:
					case <-r.Context().Done():
						return
					}
				}
			}))
			peerSrv := httptest.NewServer(b.h.PeerHandler())
			t.Cleanup(peerSrv.Close)
			ha, err := NewHandler(Config{Agents: noAgents{}, KnownAgents: []string{"dc1"},
				Peers:   &staticPeers{addr: peerSrv.Listener.Addr().String()},
				Clients: []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"*/*"}}}})
			require.NoError(t, err)
			addrA, _ := startFront(t, ha, nil)

			c, err := net.Dial("tcp", addrA)
			require.NoError(t, err)
			defer c.Close()
			_, err = fmt.Fprintf(c, "POST /dc1/notes/mcp HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ci-token\r\n%s\r\nContent-Length: 2\r\n\r\n{}", path.extra)
			require.NoError(t, err)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			body := bufio.NewReader(resp.Body)
			for i := range 3 {
				for {
					line, err := body.ReadString('\n')
					require.NoError(t, err)
					if strings.HasPrefix(line, "data:") {
						require.Equal(t, fmt.Sprintf("data: {\"n\":%d}\n", i), line)
						break
					}
				}
				next <- struct{}{} // the agent writes the next event only now
			}
		})
	}
}

// A peer relay that dies under an exchange (its link breaks after the
// request went out) costs that exchange (502, outcome unknown) and no
// more: the next ones go to another relay holding the agent, although
// the registry still lists the dead one first.
func TestPeerLinkBreaksThenOtherPeer(t *testing.T) {
	dying, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { dying.Close() })
	go func() {
		for {
			c, err := dying.Accept()
			if err != nil {
				return
			}
			// Read the request head, then die without an answer.
			_, _ = bufio.NewReader(c).ReadString('\n')
			c.Close()
		}
	}()
	_, hb, _ := newReplicaHandler(t, func(c *Config) { c.Name = "relay-b" })
	peerSrv := httptest.NewServer(hb.PeerHandler())
	t.Cleanup(peerSrv.Close)
	peers := &staticPeers{first: dying.Addr().String(), addr: peerSrv.Listener.Addr().String()}
	ha, err := NewHandler(Config{Agents: noAgents{}, KnownAgents: []string{"dc1"}, Peers: peers,
		Clients: []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"*/*"}}}})
	require.NoError(t, err)
	addrA, _ := startFront(t, ha, nil)

	r, body := postBody(t, addrA)
	require.Equal(t, http.StatusBadGateway, r.StatusCode)
	require.Contains(t, body, `"reason":"upstream_outcome_unknown"`)
	for range 3 {
		r = post(t, addrA)
		require.Equal(t, http.StatusOK, r.StatusCode, "the exchange after the broken link went to the dead relay again")
		require.Equal(t, "relay-b", r.Header.Get(ViaHeader))
	}
}

// TestPeerForwardingKeepsNarrowing: a client narrowed to some tools of a
// server (allow agent/server/tool-glob) stays narrowed when its exchange
// is forwarded to the relay holding the agent; a tools header the client
// forged is dropped by the first relay, never passed on.
func TestPeerForwardingKeepsNarrowing(t *testing.T) {
	_, hb, _ := newReplicaHandler(t, func(c *Config) { c.Name = "relay-b"; c.Peers = &staticPeers{} })
	peerSrv := httptest.NewServer(hb.PeerHandler())
	t.Cleanup(peerSrv.Close)
	toB := &staticPeers{addr: peerSrv.Listener.Addr().String(), tags: replicaTags}
	ha, err := NewHandler(Config{Agents: noAgents{}, KnownAgents: []string{"dc1"}, Name: "relay-a", Peers: toB,
		Clients: []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"dc1/notes/search_*"}}}})
	require.NoError(t, err)
	addrA, _ := startFront(t, ha, nil)
	for _, extra := range [][]string{nil, {"X-Mcptun-Tools: *"}} {
		r := post(t, addrA, extra...)
		require.Equal(t, http.StatusOK, r.StatusCode)
		require.Equal(t, "relay-b", r.Header.Get(ViaHeader))
		require.Equal(t, []string{"search_%2A"}, r.Header.Values("X-Got-Tools"), "the agent behind the peer must get the narrowing")
	}
}

// labelObserver records the agent/server labels an Observer is given.
type labelObserver struct {
	mu      sync.Mutex
	servers map[string]int // server label → exchanges
	open    map[string]int // server label → streams open
}

func (o *labelObserver) Exchange(agent, server, method string, status int, reason string, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.servers[server]++
}

func (o *labelObserver) StreamOpened(agent, server string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.open[server]++
}

func (o *labelObserver) StreamClosed(agent, server string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.open[server]--
}

// notesOnly is a replicaSet whose agent offers the server notes alone.
type notesOnly struct{ *replicaSet }

func (s notesOnly) Offers(agent, server string) (bool, bool) {
	return agent == "dc1", server == "notes"
}

// A relay forwarding to a peer cannot know which servers the agent
// offers: a client naming made-up servers must not make new metric
// series (label values) at it. The server label of a forwarded exchange
// is the one the peer vouched for (it routed the exchange: X-Mcptun-Via),
// or "" — on both paths.
func TestPeerForwardingBoundedLabels(t *testing.T) {
	for _, path := range []struct{ name, extra string }{
		{"fast", "X-Path: fast"},
		{"net/http", "Connection: X-Force"},
	} {
		t.Run(path.name, func(t *testing.T) {
			_, hb, _ := newReplicaHandler(t, func(c *Config) {
				c.Name, c.Peers, c.Agents = "relay-b", &staticPeers{}, notesOnly{c.Agents.(*replicaSet)}
			})
			peerSrv := httptest.NewServer(hb.PeerHandler())
			t.Cleanup(peerSrv.Close)
			obs := &labelObserver{servers: map[string]int{}, open: map[string]int{}}
			toB := &staticPeers{addr: peerSrv.Listener.Addr().String(), tags: replicaTags}
			ha, err := NewHandler(Config{Agents: noAgents{}, KnownAgents: []string{"dc1"}, Name: "relay-a", Peers: toB,
				Observer: obs, Clients: []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"dc1/*"}}}})
			require.NoError(t, err)
			addrA, _ := startFront(t, ha, nil)

			r := post(t, addrA, path.extra)
			require.Equal(t, http.StatusOK, r.StatusCode)
			for i := range 3 {
				c, err := net.Dial("tcp", addrA)
				require.NoError(t, err)
				body := `{"jsonrpc":"2.0","id":1,"method":"ping"}`
				_, err = fmt.Fprintf(c, "POST /dc1/made-up-%d/mcp HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ci-token\r\n"+
					"Content-Type: application/json\r\n%s\r\nContent-Length: %d\r\n\r\n%s", i, path.extra, len(body), body)
				require.NoError(t, err)
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				require.NoError(t, err)
				resp.Body.Close()
				c.Close()
				require.Equal(t, http.StatusNotFound, resp.StatusCode, "the peer refuses a server the agent does not offer")
			}
			require.Eventually(t, func() bool {
				obs.mu.Lock()
				defer obs.mu.Unlock()
				n := 0
				for _, v := range obs.servers {
					n += v
				}
				return n == 4
			}, 5*time.Second, 10*time.Millisecond)
			// A GET stream through the peer opens and closes under the
			// label the peer vouched for.
			c, err := net.Dial("tcp", addrA)
			require.NoError(t, err)
			_, err = fmt.Fprintf(c, "GET /dc1/notes/mcp HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ci-token\r\n%s\r\n\r\n", path.extra)
			require.NoError(t, err)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			require.NoError(t, err)
			resp.Body.Close()
			c.Close()
			require.Eventually(t, func() bool {
				obs.mu.Lock()
				defer obs.mu.Unlock()
				return obs.servers["notes"] == 2
			}, 5*time.Second, 10*time.Millisecond)
			obs.mu.Lock()
			defer obs.mu.Unlock()
			require.Equal(t, map[string]int{"notes": 2, "": 3}, obs.servers, "server labels at the forwarding relay")
			require.Equal(t, map[string]int{"notes": 0}, obs.open, "streams opened and closed under one label")
		})
	}
}

// TestPeerAccessLine: the relay holding the tunnel writes an access line
// for an exchange a peer forwarded to it (path=peer, the client the peer
// verified, the agent and server), as the first relay does for its side.
func TestPeerAccessLine(t *testing.T) {
	logs := &syncBuf{}
	_, hb, _ := newReplicaHandler(t, func(c *Config) {
		c.Name = "relay-b"
		c.Peers = &staticPeers{}
		c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	peerSrv := httptest.NewServer(hb.PeerHandler())
	t.Cleanup(peerSrv.Close)
	toB := &staticPeers{addr: peerSrv.Listener.Addr().String(), tags: replicaTags}
	ha, err := NewHandler(Config{Agents: noAgents{}, KnownAgents: []string{"dc1"}, Name: "relay-a", Peers: toB,
		Clients: []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"*/*"}}}})
	require.NoError(t, err)
	addrA, _ := startFront(t, ha, nil)
	r := post(t, addrA)
	require.Equal(t, http.StatusOK, r.StatusCode)
	require.Equal(t, "relay-b", r.Header.Get(ViaHeader))
	var line map[string]any
	require.Eventually(t, func() bool {
		for _, l := range logs.accessLines(t) {
			if l["path"] == "peer" {
				line = l
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "no access line at the holding relay:\n%s", logs.String())
	require.Equal(t, "ci", line["client"])
	require.Equal(t, "dc1", line["agent"])
	require.Equal(t, "notes", line["server"])
	require.EqualValues(t, 200, line["status"])
}
