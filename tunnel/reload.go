package tunnel

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// codeCredentialRemoved ends the session of a replica whose credential a
// reload of the relay's configuration removed.
const codeCredentialRemoved = "credential_removed"

// SetAgents replaces the credentials agents authenticate with (a reload
// of the relay's configuration). Handshakes from now on check the new
// ones. A connected replica whose credential is gone (its agent removed,
// or its token hash) is told so with goaway "credential_removed" and
// disconnected; every other session, and the exchanges on it, go on
// untouched. It reports how many replicas it disconnected.
func (s *Server) SetAgents(agents []AgentCredential) (int, error) {
	creds, err := buildCreds(agents)
	if err != nil {
		return 0, fmt.Errorf("tunnel: set agents: %w", err)
	}
	s.creds.Store(&creds)
	// A handshake that checked the old table and registers after this
	// look is not caught here: its session lasts until it ends. Reloads
	// are rare and such a race needs a reload within one handshake, so
	// the second reload (or the agent's next reconnect) settles it.
	var cut []*agentSession
	s.mu.Lock()
	for name, r := range s.agents {
		for tag, p := range r.byTag {
			if !slices.ContainsFunc(creds[name], func(c replicaCred) bool { return c.tag == tag }) {
				cut = append(cut, p.conns...)
			}
		}
	}
	s.mu.Unlock()
	for _, a := range cut {
		s.log.Warn("tunnel: agent credential removed from the configuration: disconnecting", "agent", a.status.Name,
			"replica", a.tag, "remote", a.status.Remote)
		s.wg.Go(func() {
			s.goAway(a, answer{Type: typeGoAway, Code: codeCredentialRemoved,
				Message: "the relay's configuration no longer lists this agent's credential"})
			a.sess.Close()
		})
	}
	return len(cut), nil
}

// updateOffers applies an agent's offers frame: from now on the relay
// routes to the servers it lists (those it dropped get 404 unknown_server,
// new ones are reachable). A frame it cannot use is logged and ignored:
// the earlier offers stay, and the session goes on.
func (s *Server) updateOffers(a *agentSession, b []byte) {
	servers, err := decodeOffers(b)
	if err != nil {
		s.log.Warn("tunnel: ignoring the agent's offers frame; its earlier offers stay", "agent", a.status.Name,
			"replica", a.tag, "remote", a.status.Remote, "err", err)
		return
	}
	s.mu.Lock()
	old := a.status.Servers
	a.status.Servers = servers
	s.mu.Unlock()
	added, removed := offerDiff(old, servers)
	s.log.Info("tunnel: agent offers changed", "agent", a.status.Name, "replica", a.tag,
		"added", strings.Join(added, ","), "removed", strings.Join(removed, ","), "servers", len(servers))
}

// offerDiff names the servers in new and not old, and those in old and not
// new.
func offerDiff(old, new []OfferedServer) (added, removed []string) {
	has := func(list []OfferedServer, name string) bool {
		return slices.ContainsFunc(list, func(s OfferedServer) bool { return s.Name == name })
	}
	for _, s := range new {
		if !has(old, s.Name) {
			added = append(added, s.Name)
		}
	}
	for _, s := range old {
		if !has(new, s.Name) {
			removed = append(removed, s.Name)
		}
	}
	return added, removed
}

// offerList is the agent's current offers once SetServers changed them.
type offerList struct {
	mu      sync.Mutex
	servers []OfferedServer
	set     bool
}

// servers is the offer list a hello sends now.
func (cfg *ClientConfig) servers() []OfferedServer {
	if cfg.offers != nil {
		cfg.offers.mu.Lock()
		defer cfg.offers.mu.Unlock()
		if cfg.offers.set {
			return cfg.offers.servers
		}
	}
	return cfg.Servers
}

// SetServers changes what the agent offers (a reload of its
// configuration): hellos from now on carry the new list, and the relay of
// the current session is sent it at once in an offers frame, so it routes
// to the new servers and answers 404 for removed ones. A relay that
// predates the offers frame ignores it and keeps the hello's list until
// the agent reconnects. The error is a list the relay would refuse, or
// the frame not going out (the session is then failing, and the next
// one's hello carries the list).
func (c *Client) SetServers(servers []OfferedServer) error {
	servers = slices.Clone(servers)
	if servers == nil {
		servers = []OfferedServer{}
	}
	if err := validateServers(servers); err != nil {
		return fmt.Errorf("tunnel: set servers: %w", err)
	}
	o := c.cfg.offers
	o.mu.Lock()
	o.servers, o.set = servers, true
	o.mu.Unlock()
	c.mu.Lock()
	cs := c.cur
	c.mu.Unlock()
	if cs == nil {
		return nil
	}
	return c.sendOffers(cs)
}

// sendOffers sends cs the current offers unless it has them already.
func (c *Client) sendOffers(cs *clientSession) error {
	servers := c.cfg.servers()
	cs.wmu.Lock()
	defer cs.wmu.Unlock()
	if slices.Equal(cs.offered, servers) {
		return nil
	}
	cs.ctl.SetWriteDeadline(time.Now().Add(lingerTimeout))
	defer cs.ctl.SetWriteDeadline(time.Time{})
	if err := writeFrame(cs.ctl, offers{Type: typeOffers, Version: OffersVersion, Servers: servers}); err != nil {
		return fmt.Errorf("tunnel: send offers to %s: %w", c.cfg.Address, err)
	}
	cs.offered = servers
	c.log.Info("tunnel: told the relay the servers offered now", "servers", len(servers))
	return nil
}

// SetServers changes what the agent offers on every tunnel, and on those
// made later (see Client.SetServers). Errors of single tunnels are joined.
func (m *Multi) SetServers(servers []OfferedServer) error {
	servers = slices.Clone(servers)
	if servers == nil {
		servers = []OfferedServer{}
	}
	if err := validateServers(servers); err != nil {
		return fmt.Errorf("tunnel: set servers: %w", err)
	}
	m.mu.Lock()
	m.cfg.Client.Servers = servers
	clients := make([]*Client, 0, len(m.tunnels))
	for _, t := range m.tunnels {
		clients = append(clients, t.client)
	}
	m.mu.Unlock()
	var errs []error
	for _, c := range clients {
		errs = append(errs, c.SetServers(servers))
	}
	return errors.Join(errs...)
}
