package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// dropHeaders are client headers that never cross the tunnel: client
// credentials stay at the relay, and the client cannot forge who it is.
var dropHeaders = []string{"Authorization", "Cookie", ClientHeader}

// forward sends the exchange to the agent over a pooled tunnel stream.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, client, agent, server string) {
	if r.Method != http.MethodGet {
		if !h.inflight.Enter() {
			w.Header().Set("Retry-After", relayDraining.value)
			writeError(w, relayDraining.status, relayDraining.reason, relayDraining.msg)
			return
		}
		defer h.inflight.Leave()
	}
	err := h.forwarder(agent).Forward(w, r, httpfwd.Request{
		Host:       agent,
		RequestURI: "/" + server + "/mcp",
		SetHeader:  http.Header{ClientHeader: {client}},
		DelHeader:  dropHeaders,
	})
	if err == nil {
		return
	}
	if r.Context().Err() != nil {
		// The client went away; nobody is left to answer.
		return
	}
	var ue *httpfwd.UpstreamError
	if !errors.As(err, &ue) {
		// The answer had begun: all we can do is cut it short.
		h.log.Debug("forward cut short", "client", client, "agent", agent, "server", server, "err", err)
		return
	}
	status, reason, msg := h.forwardFailed(client, agent, server, err)
	writeError(w, status, reason, msg)
}

// forwardFailed logs an exchange that failed before any answer came and
// says what the client is told.
func (h *Handler) forwardFailed(client, agent, server string, err error) (status int, reason, msg string) {
	switch {
	case h.closed.Load():
		// The relay cut the exchange: its shutdown grace ran out (or
		// it was told to stop at once).
		h.log.Warn("exchange cut by the relay's shutdown", "client", client, "agent", agent, "server", server, "err", err)
		return http.StatusServiceUnavailable, "relay_shutdown",
			fmt.Sprintf("the relay shut down before agent %q answered (its shutdown grace period ran out, or it was told to stop at once); the request may have been carried out", agent)
	case h.agentDraining(agent):
		h.log.Warn("exchange cut by the agent's shutdown", "client", client, "agent", agent, "server", server, "err", err)
		return http.StatusServiceUnavailable, "agent_shutdown",
			fmt.Sprintf("agent %q shut down before answering (its shutdown grace period ran out, or it was told to stop at once); the request may have been carried out", agent)
	}
	if online, _ := h.agents.Offers(agent, server); !online {
		return http.StatusServiceUnavailable, "agent_offline", fmt.Sprintf("agent %q disconnected during the request", agent)
	}
	h.log.Warn("forward failed", "client", client, "agent", agent, "server", server, "err", err)
	return http.StatusBadGateway, "tunnel_error", fmt.Sprintf("forwarding to %s/%s failed: %v", agent, server, err)
}

// forwarder returns the agent's stream pool.
func (h *Handler) forwarder(agent string) *httpfwd.Forwarder {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.forwarders[agent]; f != nil {
		return f
	}
	f := httpfwd.New(func(ctx context.Context) (net.Conn, error) {
		return h.agents.Dial(ctx, agent)
	}, httpfwd.Options{MaxIdle: 1024})
	h.forwarders[agent] = f
	return f
}
