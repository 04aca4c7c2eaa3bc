package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// dropHeaders are client headers that never cross the tunnel: client
// credentials stay at the relay, and the client cannot forge who it is.
var dropHeaders = []string{"Authorization", "Cookie", ClientHeader, ToolsHeader}

// forward sends the exchange to the agent over a pooled tunnel stream.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, adm admission, agent, server string) {
	client := adm.client.Name
	if h.obs != nil {
		o := h.observe(agent, server, mcpMethod(r.Method, nil), adm.peer != "")
		w = &observeWriter{ResponseWriter: w, o: o}
		defer o.done()
	}
	if r.Method != http.MethodGet {
		if !h.inflight.Enter() {
			w.Header().Set("Retry-After", relayDraining.value)
			writeError(w, relayDraining.status, relayDraining.reason, relayDraining.msg)
			return
		}
		defer h.inflight.Leave()
	}
	rc := http.NewResponseController(w)
	// net/http's server has no timeouts that measure progress (its
	// ReadTimeout and WriteTimeout bound a whole exchange, and a GET stream
	// lasts for hours), so each read of the body and each write of the
	// answer gets a deadline of its own.
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &stallBody{ReadCloser: r.Body, rc: rc, timeout: h.limits.BodyTimeout}
	}
	fwd, stalls := h.exchangePath(agent, adm)
	tw := &stallWriter{ResponseWriter: w, rc: rc, timeout: h.limits.WriteTimeout}
	tw.watch.Watch(stalls, ClientStallAfter, func() { _ = rc.SetWriteDeadline(time.Unix(1, 0)) })
	defer tw.watch.Stop()
	w = tw
	set := http.Header{ClientHeader: {client}}
	if adm.tools != "" {
		set[ToolsHeader] = []string{adm.tools}
	}
	if adm.replica != "" {
		if adm.sid != "" {
			set[sessionHeader] = []string{adm.sid}
		}
		w = &sessionWriter{ResponseWriter: w, prefix: adm.replica + "."}
	}
	err := fwd.Forward(w, r, httpfwd.Request{
		Host:       agent,
		RequestURI: "/" + server + "/mcp",
		SetHeader:  set,
		DelHeader:  dropHeaders,
	})
	if err == nil {
		return
	}
	if tw.stalled != nil {
		err = tw.stalled
	}
	if errors.Is(err, httpfwd.ErrBodyStalled) {
		// Before the check below: net/http cancels the request's context
		// on any failed read of the connection, this one too.
		h.cutLog.Log(h.log, slog.LevelDebug, "client cut", "reason", "body_timeout", "client", client, "agent", agent, "server", server,
			"remote", r.RemoteAddr, "body_timeout", h.limits.BodyTimeout)
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusRequestTimeout, "body_timeout", fmt.Sprintf("the request body made no progress for %s", h.limits.BodyTimeout))
		return
	}
	if r.Context().Err() != nil && !errors.Is(err, httpfwd.ErrClientStalled) {
		// The client went away; nobody is left to answer.
		return
	}
	var ue *httpfwd.UpstreamError
	if !errors.As(err, &ue) {
		// The answer had begun: all we can do is cut it short.
		h.cutShort(client, agent, server, err)
		return
	}
	status, reason, msg := h.failed(adm, agent, server, err)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", unavailableRetryAfter)
	}
	writeError(w, status, reason, msg)
}

// cutShort logs an answer cut short after it began: a client that took
// nothing for the write timeout is worth a warning (it held a tunnel
// stream and its share of the agent's window until then), anything else
// (the agent or the client went away) is routine.
func (h *Handler) cutShort(client, agent, server string, err error) {
	switch {
	case errors.Is(err, httpfwd.ErrClientBacklog):
		h.cutLog.Log(h.log, slog.LevelWarn, "slow client cut", "reason", "backlog", "client", client, "agent", agent, "server", server,
			"stalled_clients", h.stallN)
		return
	case errors.Is(err, httpfwd.ErrClientStalled):
		h.cutLog.Log(h.log, slog.LevelWarn, "slow client cut", "reason", "write_timeout", "client", client, "agent", agent, "server", server,
			"write_timeout", h.limits.WriteTimeout)
		return
	}
	h.log.Debug("forward cut short", "client", client, "agent", agent, "server", server, "err", err)
}

// stallBody gives each read of a request body on net/http's path the body
// timeout to bring something.
type stallBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
}

func (b *stallBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	n, err := b.ReadCloser.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w (%s): %w", httpfwd.ErrBodyStalled, b.timeout, err)
	}
	return n, err
}

// stallWriter gives each write and flush of an answer on net/http's path
// the write timeout to get some bytes accepted. stalled keeps the first
// such failure: net/http's Flush reports none.
type stallWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	watch   httpfwd.StallWatch
	stalled error
}

func (w *stallWriter) check(err error, cut bool) error {
	switch {
	case err == nil:
		return nil
	case cut:
		err = fmt.Errorf("%w: %w", httpfwd.ErrClientBacklog, err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = fmt.Errorf("%w (%s): %w", httpfwd.ErrClientStalled, w.timeout, err)
	default:
		return err
	}
	if w.stalled == nil {
		w.stalled = err
	}
	return err
}

func (w *stallWriter) Write(p []byte) (int, error) {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	w.watch.Begin()
	n, err := w.ResponseWriter.Write(p)
	return n, w.check(err, w.watch.End())
}

func (w *stallWriter) Flush() {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	w.watch.Begin()
	err := w.rc.Flush()
	_ = w.check(err, w.watch.End())
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *stallWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

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
	case h.closed.Load():
		// The relay cut the exchange: its shutdown grace ran out (or
		// it was told to stop at once).
		h.log.Warn("exchange cut by the relay's shutdown", "client", client, "agent", agent, "server", server, "err", err)
		return http.StatusServiceUnavailable, reasonRelayShutdown,
			fmt.Sprintf("the relay shut down before agent %q answered (its shutdown grace period ran out, or it was told to stop at once); the request may have been carried out", agent)
	case h.agentDraining(agent):
		h.log.Warn("exchange cut by the agent's shutdown", "client", client, "agent", agent, "server", server, "err", err)
		return http.StatusServiceUnavailable, reasonAgentShutdown,
			fmt.Sprintf("agent %q shut down before answering (its shutdown grace period ran out, or it was told to stop at once); the request may have been carried out", agent)
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

// StalledClients reports, for metrics, how many clients of agent read
// nothing now (each holding a place in its stall budget) and how many
// were cut for want of one.
func (h *Handler) StalledClients(agent string) (stalled int64, cut uint64) {
	h.mu.Lock()
	pa := h.perAgent[agent]
	h.mu.Unlock()
	if pa == nil {
		return 0, 0
	}
	b := pa.stalls
	return b.Stalled(), b.Cuts()
}

// perAgent is what the relay keeps for an agent: its stream pools, one
// per replica ("" without replicas), made again after a session of the
// agent ended (AgentDown), and its budget of
// clients that read nothing, which outlives sessions (exchanges give their
// places back to it whenever they end).
type perAgent struct {
	fwds   map[string]*httpfwd.Forwarder
	stalls *httpfwd.StallBudget
}

// agentPath returns the stream pool of the agent's replica and the
// agent's stall budget, with one look-up per exchange.
func (h *Handler) agentPath(agent, replica string) (*httpfwd.Forwarder, *httpfwd.StallBudget) {
	h.mu.Lock()
	defer h.mu.Unlock()
	pa := h.perAgent[agent]
	if pa == nil {
		pa = &perAgent{stalls: httpfwd.NewStallBudget(h.stallN)}
		h.perAgent[agent] = pa
	}
	if f := pa.fwds[replica]; f != nil {
		return f, pa.stalls
	}
	dial := func(ctx context.Context) (net.Conn, error) { return h.agents.Dial(ctx, agent) }
	if replica != "" {
		dial = func(ctx context.Context) (net.Conn, error) { return h.replicas.DialReplica(ctx, agent, replica) }
	}
	f := httpfwd.New(dial, httpfwd.Options{MaxIdle: 1024})
	if pa.fwds == nil {
		pa.fwds = make(map[string]*httpfwd.Forwarder)
	}
	pa.fwds[replica] = f
	return f, pa.stalls
}

// sessionWriter puts the replica's tag in front of the Mcp-Session-Id an
// agent answers with, on net/http's path (see ReplicaAgents).
type sessionWriter struct {
	http.ResponseWriter
	prefix string
	wrote  bool
}

func (w *sessionWriter) WriteHeader(code int) {
	if code >= 200 && !w.wrote { // not an interim answer
		w.wrote = true
		if h := w.Header(); h[sessionHeader] != nil {
			for i, v := range h[sessionHeader] {
				h[sessionHeader][i] = w.prefix + v
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *sessionWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *sessionWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *sessionWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
