package relay

import (
	"fmt"
	"slices"
	"strings"

	"github.com/mcptun/mcptun/internal/ratelimit"
)

// authTable is who may use the relay: the configured agent names and the
// clients with their limiters. It is never changed once made: Reconfigure
// makes a new one and swaps it in, so the hot path reads it with one
// atomic load and no lock, and a request sees one table from start to end.
type authTable struct {
	known   map[string]bool
	clients []client
}

// newAuthTable makes the table for known agents and clients. A client
// that old (the table in use, or nil) has under the same name with the
// same rate and burst keeps its limiter, so a reload neither refills nor
// empties its allowance.
func newAuthTable(known []string, clients []Client, old *authTable) (*authTable, error) {
	t := &authTable{known: make(map[string]bool, len(known)), clients: make([]client, 0, len(clients))}
	for _, a := range known {
		t.known[a] = true
	}
	for _, c := range clients {
		if c.Rate < 0 || c.Burst < 0 {
			return nil, fmt.Errorf("relay: client %q: rate %v and burst %d must not be negative", c.Name, c.Rate, c.Burst)
		}
		var lim *ratelimit.Limiter
		if prev := old.client(c.Name); prev != nil && prev.Rate == c.Rate && prev.Burst == c.Burst {
			lim = prev.limiter
		} else {
			lim = ratelimit.New(c.Rate, c.Burst)
		}
		t.clients = append(t.clients, client{Client: c, limiter: lim, narrows: namesTools(c.Allow)})
	}
	return t, nil
}

// namesTools reports whether some allow pattern names tools
// ("agent/server/tool-glob"): then the client's exchanges carry
// ToolsHeader. Token and OAuth clients alike.
func namesTools(allow []string) bool {
	for _, p := range allow {
		if strings.Count(p, "/") >= 2 {
			return true
		}
	}
	return false
}

// client is the configured client named name, or nil.
func (t *authTable) client(name string) *client {
	if t == nil {
		return nil
	}
	for i := range t.clients {
		if t.clients[i].Name == name {
			return &t.clients[i]
		}
	}
	return nil
}

// KnownAgents lists the agent names configured now (after any reload),
// sorted: the per-agent metrics' label values.
func (h *Handler) KnownAgents() []string {
	known := h.auth.Load().known
	out := make([]string, 0, len(known))
	for a := range known {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// Reconfigure replaces the configured agent names and clients (a reload of
// the relay's configuration): requests from now on are authenticated and
// scoped by the new ones — a removed client's next request gets 401, a new
// one's goes through — while exchanges in flight, open GET streams and
// sessions are untouched (a session stays bound to the client name that
// made it). On error nothing changes.
func (h *Handler) Reconfigure(knownAgents []string, clients []Client) error {
	t, err := newAuthTable(knownAgents, clients, h.auth.Load())
	if err != nil {
		return err
	}
	h.auth.Store(t)
	return nil
}
