package mcpproxy

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// originGuard is the stdio bridge's DNS-rebinding defence. A page on a
// foreign origin whose name the attacker rebinds to an address that reaches
// the bridge makes "same-origin" requests to it; the browser still says
// where the page came from in Origin. So a present Origin must be loopback
// or listed, and (when hosts are configured) the Host must be one we answer
// to. The relay checks Origin too; the agent does not rely on it.
type originGuard struct {
	anyOrigin bool
	origins   map[string]bool // lower-case scheme://host[:port]
	hosts     map[string]bool // lower-case host names; empty: any Host
}

func newOriginGuard(origins, hosts []string) (*originGuard, error) {
	g := &originGuard{origins: make(map[string]bool), hosts: make(map[string]bool)}
	for i, o := range origins {
		if o == "*" {
			g.anyOrigin = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("AllowedOrigins[%d] %q: want scheme://host[:port] or *", i, o)
		}
		g.origins[strings.ToLower(u.Scheme+"://"+u.Host)] = true
	}
	for i, h := range hosts {
		if h == "" || strings.ContainsAny(h, "/:@ \t") {
			return nil, fmt.Errorf("AllowedHosts[%d] %q: want a host name without port", i, h)
		}
		g.hosts[strings.ToLower(h)] = true
	}
	return g, nil
}

// check returns why r must be refused, or "".
func (g *originGuard) check(r *http.Request) string {
	if len(g.hosts) > 0 {
		host := hostOnly(r.Host)
		if !isLoopback(host) && !g.hosts[strings.ToLower(host)] {
			return fmt.Sprintf("Host %q is not one this agent answers to", clip([]byte(r.Host), 100))
		}
	}
	origin := r.Header.Get("Origin")
	if origin == "" || g.anyOrigin || g.origins[strings.ToLower(origin)] {
		return ""
	}
	if u, err := url.Parse(origin); err == nil && u.Host != "" && isLoopback(u.Hostname()) {
		return ""
	}
	return fmt.Sprintf("Origin %q is not allowed by the agent (add it to the agent's allowed origins)", clip([]byte(origin), 100))
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && ip.IsLoopback()
}
