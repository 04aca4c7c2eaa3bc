package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"time"
)

type routeKey struct{}

type route struct {
	client, agent, server string
}

// forward sends the exchange to the agent over a (pooled) tunnel stream.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, client, agent, server string) {
	rt := &route{client: client, agent: agent, server: server}
	h.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), routeKey{}, rt)))
}

func (h *Handler) newProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		// The URL host names the agent; each agent has its own stream pool.
		Transport: roundTripFunc(func(req *http.Request) (*http.Response, error) {
			return h.transport(req.URL.Host).RoundTrip(req)
		}),
		Rewrite: func(pr *httputil.ProxyRequest) {
			rt := pr.In.Context().Value(routeKey{}).(*route)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = rt.agent
			pr.Out.URL.Path = "/" + rt.server + "/mcp"
			pr.Out.URL.RawPath = ""
			pr.Out.Host = rt.agent
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Del("Cookie")
			pr.Out.Header.Set(ClientHeader, rt.client)
		},
		ErrorHandler: h.proxyError,
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (h *Handler) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	rt, _ := r.Context().Value(routeKey{}).(*route)
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		// The client went away; nobody is left to answer.
		return
	}
	if _, online := h.agents.Servers(rt.agent); !online {
		writeError(w, http.StatusServiceUnavailable, "agent_offline",
			fmt.Sprintf("agent %q disconnected during the request", rt.agent))
		return
	}
	h.log.Warn("forward failed", "client", rt.client, "agent", rt.agent, "server", rt.server, "err", err)
	writeError(w, http.StatusBadGateway, "tunnel_error",
		fmt.Sprintf("forwarding to %s/%s failed: %v", rt.agent, rt.server, err))
}

// transport returns the agent's stream pool.
func (h *Handler) transport(agent string) *http.Transport {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t := h.transports[agent]; t != nil {
		return t
	}
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return h.agents.Dial(ctx, agent)
		},
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// Answers may be long SSE streams: no response timeout here; the
		// client's own cancellation ends the exchange.
	}
	h.transports[agent] = t
	return t
}
