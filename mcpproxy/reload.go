package mcpproxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"slices"

	"github.com/mcptun/mcptun/internal/ratelimit"
)

// serverTable is the servers a Handler serves. It is never changed once
// made: SetServers makes a new one and swaps it in.
type serverTable struct {
	servers map[string]http.Handler
	limits  map[string]*ratelimit.Limiter // by server; absent: no limit
	cfgs    map[string]ServerConfig
	stdio   []*stdioServer
	proxies []*httpServer
}

func (h *Handler) table() *serverTable { return h.tab.Load() }

// ServerChanges says what SetServers did, by server name.
type ServerChanges struct {
	Added, Removed, Changed, Unchanged []string
}

// newServerTable builds the table for servers, reusing from old (nil: none)
// every server whose configuration is the same, with its sessions and
// its rate limiter; the others are made anew.
func (h *Handler) newServerTable(servers []ServerConfig, old *serverTable) (*serverTable, ServerChanges, error) {
	var ch ServerChanges
	if len(servers) == 0 {
		return nil, ch, errors.New("mcpproxy: no servers configured")
	}
	t := &serverTable{servers: make(map[string]http.Handler), limits: make(map[string]*ratelimit.Limiter),
		cfgs: make(map[string]ServerConfig)}
	for i, sc := range servers {
		if err := validate(sc); err != nil {
			return nil, ch, fmt.Errorf("mcpproxy: servers[%d] (%q): %w", i, sc.Name, err)
		}
		if _, dup := t.servers[sc.Name]; dup {
			return nil, ch, fmt.Errorf("mcpproxy: servers[%d]: duplicate server name %q", i, sc.Name)
		}
		if sc.Policy.Pin && h.pins == nil {
			// Made once, by the first table that pins: every later
			// table's servers share it (and the file it keeps).
			if h.opts.PinFile == "" {
				return nil, ch, fmt.Errorf("mcpproxy: servers[%d] (%q): pin needs Options.PinFile", i, sc.Name)
			}
			pins, err := newPinStore(h.opts.PinFile, h.log)
			if err != nil {
				return nil, ch, fmt.Errorf("mcpproxy: %w", err)
			}
			h.pins = pins
		}
		if old != nil {
			if prev, ok := old.cfgs[sc.Name]; ok && reflect.DeepEqual(prev, sc) {
				t.cfgs[sc.Name] = prev
				t.servers[sc.Name] = old.servers[sc.Name]
				if l := old.limits[sc.Name]; l != nil {
					t.limits[sc.Name] = l
				}
				switch srv := old.servers[sc.Name].(type) {
				case *stdioServer:
					t.stdio = append(t.stdio, srv)
				case *httpServer:
					t.proxies = append(t.proxies, srv)
				}
				ch.Unchanged = append(ch.Unchanged, sc.Name)
				continue
			}
			if _, ok := old.cfgs[sc.Name]; ok {
				ch.Changed = append(ch.Changed, sc.Name)
			} else {
				ch.Added = append(ch.Added, sc.Name)
			}
		}
		limit := ratelimit.New(sc.Rate, sc.Burst)
		if limit != nil {
			t.limits[sc.Name] = limit
		}
		t.cfgs[sc.Name] = sc
		if sc.URL != "" {
			p, err := newHTTPServer(h, sc)
			if err != nil {
				t.closeNew(old)
				return nil, ch, fmt.Errorf("mcpproxy: servers[%d] (%q): %w", i, sc.Name, err)
			}
			t.proxies = append(t.proxies, p)
			t.servers[sc.Name] = p
			continue
		}
		if err := stdioSupported(); err != nil {
			t.closeNew(old)
			return nil, ch, fmt.Errorf("mcpproxy: servers[%d] (%q): %w", i, sc.Name, err)
		}
		s := newStdioServer(h, sc)
		s.limit = limit
		t.stdio = append(t.stdio, s)
		t.servers[sc.Name] = s
	}
	if old != nil {
		for name := range old.cfgs {
			if _, ok := t.cfgs[name]; !ok {
				ch.Removed = append(ch.Removed, name)
			}
		}
		slices.Sort(ch.Removed)
	}
	return t, ch, nil
}

// closeNew releases the url: servers t made that old does not have (a
// table given up half-built). Stdio servers hold nothing until a session.
func (t *serverTable) closeNew(old *serverTable) {
	for _, p := range t.proxies {
		if old == nil || !slices.Contains(old.proxies, p) {
			p.close()
		}
	}
}

// SetServers changes the servers the handler serves (a reload of the
// agent's configuration), all or nothing. A server whose configuration is
// the same is untouched: its sessions, children, streams and rate-limit
// allowance go on. A removed server's sessions end (their children are
// stopped, their calls in progress answered with an error) and its
// endpoint answers 404 from now on. A changed server is replaced: its
// existing sessions end as a removed server's do, and clients start new
// ones (a request for an ended session gets 404, on which MCP clients
// initialize again) with the new configuration. Added servers are
// served at once. SetServers must not be called concurrently with itself
// or after Close.
func (h *Handler) SetServers(servers []ServerConfig) (ServerChanges, error) {
	old := h.table()
	t, ch, err := h.newServerTable(servers, old)
	if err != nil {
		return ServerChanges{}, err
	}
	h.tab.Store(t)
	// An exchange that loaded the old table just before the swap may
	// still reach a retired server: a stdio one refuses to start a child
	// once closed, a url: one's forwarder fails its exchange.
	for _, name := range append(slices.Clone(ch.Removed), ch.Changed...) {
		switch srv := old.servers[name].(type) {
		case *stdioServer:
			srv.closeAll()
		case *httpServer:
			srv.close()
		}
	}
	return ch, nil
}

// CheckSetServers reports what SetServers would refuse in servers,
// without starting or changing anything: CheckServers, a server that
// pins when the handler was made without Options.PinFile, and a url:
// server at an address outside the handler's Options.UpstreamNetworks
// (neither is reloaded: that takes a restart).
func (h *Handler) CheckSetServers(servers []ServerConfig) error {
	if err := CheckServers(servers); err != nil {
		return err
	}
	for i, sc := range servers {
		if sc.Policy.Pin && h.opts.PinFile == "" {
			return fmt.Errorf("mcpproxy: servers[%d] (%q): pin: true needs a pin file, and the agent started without one (no server pinned then): restart the agent to pin", i, sc.Name)
		}
		if sc.URL != "" {
			// The networks the agent started with hold until a restart.
			if u, err := url.Parse(sc.URL); err == nil {
				if err := h.checkUpstreamURL(u, sc.URL); err != nil {
					return fmt.Errorf("mcpproxy: servers[%d] (%q): %w (upstream_networks as the agent started; a change takes a restart)", i, sc.Name, err)
				}
			}
		}
	}
	return nil
}

// CheckServers reports what NewHandler or SetServers would refuse in
// servers, without starting or changing anything.
func CheckServers(servers []ServerConfig) error {
	if len(servers) == 0 {
		return errors.New("mcpproxy: no servers configured")
	}
	seen := make(map[string]bool, len(servers))
	for i, sc := range servers {
		if err := validate(sc); err != nil {
			return fmt.Errorf("mcpproxy: servers[%d] (%q): %w", i, sc.Name, err)
		}
		if seen[sc.Name] {
			return fmt.Errorf("mcpproxy: servers[%d]: duplicate server name %q", i, sc.Name)
		}
		seen[sc.Name] = true
		if sc.URL == "" {
			if err := stdioSupported(); err != nil {
				return fmt.Errorf("mcpproxy: servers[%d] (%q): %w", i, sc.Name, err)
			}
		}
	}
	return nil
}
