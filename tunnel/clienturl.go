package tunnel

import (
	"net"
	"net/url"
	"slices"
)

// SetClientURL sets the base URL MCP clients reach this relay at, which
// the welcome tells each agent from then on (see answer.ClientURL).
func (s *Server) SetClientURL(u string) { s.clientURL.Store(u) }

// ClientURL is the base URL MCP clients reach the relay of the current
// session at, with an empty or unspecified host (a relay listening on
// 0.0.0.0) replaced by the host the agent dialed; "" when disconnected or
// the relay did not say.
func (c *Client) ClientURL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil || c.cur.clientURL == "" {
		return ""
	}
	return resolveClientURL(c.cur.clientURL, c.cfg.Address)
}

func resolveClientURL(raw, dialed string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	host, port := u.Hostname(), u.Port()
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		h, _, err := net.SplitHostPort(dialed)
		if err != nil {
			return ""
		}
		host = h
		if port != "" {
			u.Host = net.JoinHostPort(host, port)
		} else if net.ParseIP(host) != nil && net.ParseIP(host).To4() == nil {
			u.Host = "[" + host + "]"
		} else {
			u.Host = host
		}
	}
	return u.String()
}

// ClientURLs lists the client base URLs of the relays connected now, one
// per relay, sorted.
func (m *Multi) ClientURLs() []string {
	m.mu.Lock()
	clients := make([]*Client, 0, len(m.tunnels))
	for _, t := range m.tunnels {
		clients = append(clients, t.client)
	}
	m.mu.Unlock()
	var out []string
	seen := map[string]bool{}
	for _, c := range clients {
		if u := c.ClientURL(); u != "" && !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out
}
