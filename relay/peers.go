package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// Peers is what the relay needs from its fleet (see Config.Peers).
type Peers interface {
	// Lookup returns the addresses of the peer relays that hold a tunnel
	// to agent (to its replica tagged tag, unless tag is ""), best first;
	// never this relay.
	Lookup(agent, tag string) []string
	// Dial opens an authenticated link to the peer relay at addr.
	Dial(ctx context.Context, addr string) (net.Conn, error)
}

// ViaHeader names, on an answer a peer relay served for this one, the
// relay that holds the agent's tunnel: for operators following a request
// through the fleet.
const ViaHeader = "X-Mcptun-Via"

// reasonPeerUnreachable: the relay holding the agent's tunnel could not
// be reached over the relay-to-relay link.
const reasonPeerUnreachable = "peer_unreachable"

// exchangePath returns where an admitted exchange goes: the pooled links
// to its peer relay, or the stream pool of its agent's replica.
func (h *Handler) exchangePath(agent string, adm admission) (*httpfwd.Forwarder, *httpfwd.StallBudget) {
	if adm.peer == "" {
		return h.agentPath(agent, adm.replica)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// The agent's budget of clients that read nothing holds here too: a
	// forwarded answer nobody reads holds a link and the holder's window.
	pa := h.perAgent[agent]
	if pa == nil {
		pa = &perAgent{stalls: httpfwd.NewStallBudget(h.stallN)}
		h.perAgent[agent] = pa
	}
	stalls := pa.stalls
	f := h.peerFwds[adm.peer]
	if f == nil {
		addr := adm.peer
		f = httpfwd.New(func(ctx context.Context) (net.Conn, error) { return h.peers.Dial(ctx, addr) },
			httpfwd.Options{MaxIdle: 256})
		h.peerFwds[addr] = f
	}
	return f, stalls
}

// peerDownFor is how long a peer whose link would not open is tried only
// when no other peer holds the agent: about the registry's expiry.
const peerDownFor = 5 * time.Second

// pickPeer returns the first of peers whose link did not fail lately, or
// the first if all did.
func (h *Handler) pickPeer(peers []string) string {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range peers {
		if t, ok := h.peerDown[p]; !ok || now.Sub(t) > peerDownFor {
			delete(h.peerDown, p)
			return p
		}
	}
	return peers[0]
}

// failed words a forward that failed before its answer began; a link to
// a peer relay that would not open is peer_unreachable (nothing was sent,
// a retry is safe and, once the registry forgets a dead relay, goes
// elsewhere).
func (h *Handler) failed(adm admission, agent, server string, err error) (status int, reason, msg string) {
	var ue *httpfwd.UpstreamError
	if adm.peer != "" && errors.As(err, &ue) && !ue.Body && !h.closed.Load() {
		// The link would not open, or broke under the exchange (the peer
		// relay died with it): the next exchanges try another peer.
		h.mu.Lock()
		h.peerDown[adm.peer] = time.Now()
		h.mu.Unlock()
	}
	if adm.peer != "" && ue != nil && ue.Op == "dial" && !h.closed.Load() {
		h.cutLog.Log(h.log, slog.LevelWarn, "cannot reach the peer relay holding the agent", "client", adm.client.Name,
			"agent", agent, "server", server, "peer", adm.peer, "err", err)
		return http.StatusServiceUnavailable, reasonPeerUnreachable,
			fmt.Sprintf("the relay holding agent %q's tunnel cannot be reached; try again shortly", agent)
	}
	return h.forwardFailed(adm.client.Name, agent, server, err)
}

// PeerHandler serves the exchanges peer relays forward to this one over
// authenticated links (cluster.listen). The peer verified the client's
// token and applied its allow list and rate limit; this relay trusts the
// X-Mcptun-Client it names (only a relay with the fleet's secret opens a
// link), routes among the agent's replicas connected here, passes the
// client's name on to the agent, and never forwards again: a stale
// registry entry gets agent_offline, not a loop.
func (h *Handler) PeerHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{server}/mcp", h.servePeer)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no forwarded MCP endpoint at %s", r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(h.limits.WriteTimeout))
		if h.accessEnabled(r.Context()) {
			// The relay holding the tunnel logs what it forwarded to
			// its agent too (path=peer), as the first relay does.
			h.serveAccessOf(w, r, mux, "peer")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (h *Handler) servePeer(w http.ResponseWriter, r *http.Request) {
	if h.inflight.Draining() {
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", relayDraining.value)
		writeError(w, relayDraining.status, relayDraining.reason, relayDraining.msg)
		return
	}
	agent, server := r.Host, r.PathValue("server")
	names, sids, tools := r.Header.Values(ClientHeader), r.Header.Values(sessionHeader), r.Header.Values(ToolsHeader)
	if len(names) != 1 || names[0] == "" || len(sids) > 1 || len(tools) > 1 {
		writeError(w, http.StatusBadRequest, reasonBadRequest, "a forwarded exchange names one client and at most one session and tool list")
		return
	}
	noteAccess(w, names[0], "")
	if !h.auth.Load().known[agent] {
		writeError(w, http.StatusNotFound, "unknown_agent", fmt.Sprintf("no agent named %q", agent))
		return
	}
	// The tools the first relay narrowed the client to go on with it:
	// without them a forwarded exchange would reach every tool.
	adm := admission{client: &client{Client: Client{Name: names[0]}}, sid: r.Header.Get(sessionHeader), tools: r.Header.Get(ToolsHeader)}
	if ref := h.routeAgent(&adm, agent, server, false); ref != nil {
		if ref.header != "" {
			w.Header().Set(ref.header, ref.value)
		}
		writeError(w, ref.status, ref.reason, ref.msg)
		return
	}
	if h.name != "" {
		w.Header().Set(ViaHeader, h.name)
	}
	h.forward(w, r, adm, agent, server)
}
