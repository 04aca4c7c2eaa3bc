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
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	writeError(w, status, reason, msg)
}

// forwardFailed logs an exchange that failed before any answer came and
// says what the client is told. Once (part of) the request went to the
// agent, any failure is one answer whatever broke — the agent went away,
// its stream was reset, the agent's own upstream died: the request may or
// may not have been carried out, and it was not sent again (httpfwd). A
// stream that could not be opened had nothing sent: the agent is offline
// (or its tunnel cannot take a stream), and a retry is safe.
func (h *Handler) forwardFailed(client, agent, server string, err error) (status int, reason, msg string) {
	var ue *httpfwd.UpstreamError
	errors.As(err, &ue)
	var tooBig *http.MaxBytesError
	switch {
	case ue != nil && ue.Body && errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, reasonBodyTooLarge, fmt.Sprintf("request body over %d bytes", tooBig.Limit)
	case ue != nil && ue.Body:
		h.log.Info("bad request body", "client", client, "agent", agent, "server", server, "err", err)
		return http.StatusBadRequest, reasonBadRequest, fmt.Sprintf("reading the request body failed: %v", ue.Err)
	case ue != nil && ue.OutcomeUnknown:
		why := "the tunnel stream broke"
		if online, _ := h.agents.Offers(agent, server); !online {
			why = fmt.Sprintf("agent %q disconnected", agent)
		}
		h.log.Warn("exchange broke after the request was sent; not sent again", "client", client, "agent", agent, "server", server, "err", err)
		return http.StatusBadGateway, reasonOutcomeUnknown,
			fmt.Sprintf("%s after the request was sent to %s/%s and before an answer: it may or may not have been carried out, and was not sent again", why, agent, server)
	case ue != nil && ue.Op == "dial":
		h.log.Warn("cannot open a tunnel stream", "client", client, "agent", agent, "server", server, "err", err)
		return http.StatusServiceUnavailable, reasonAgentOffline, fmt.Sprintf("agent %q cannot be reached: %v", agent, err)
	}
	h.log.Warn("forward failed", "client", client, "agent", agent, "server", server, "err", err)
	return http.StatusBadGateway, reasonTunnelError, fmt.Sprintf("forwarding to %s/%s failed: %v", agent, server, err)
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
