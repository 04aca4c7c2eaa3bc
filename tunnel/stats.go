package tunnel

import (
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// maxSoftwareLen bounds hello.Software.
const maxSoftwareLen = 64

// validSoftware accepts what a status page may show as it is.
func validSoftware(s string) bool {
	if len(s) > maxSoftwareLen {
		return false
	}
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// SessionStats describes a tunnel session's path, for metrics.
type SessionStats struct {
	// RTT is QUIC's smoothed round-trip time, or the last yamux ping's
	// (yamux over TCP pings only a session that has been silent for a
	// while, so the figure may be old); 0 when none is known yet.
	RTT time.Duration
	// BytesSent and BytesReceived count the QUIC connection's bytes
	// (retransmissions included), or over TCP yamux's bytes on the TLS
	// connection (its framing included, TLS's own overhead not).
	BytesSent, BytesReceived uint64
}

// sessionStats reads what the transport knows of s.
func sessionStats(s Session) SessionStats {
	switch s := s.(type) {
	case *clientSession:
		return sessionStats(s.Session)
	case *quicSession:
		cs := s.conn.ConnectionStats()
		return SessionStats{RTT: cs.SmoothedRTT, BytesSent: cs.BytesSent, BytesReceived: cs.BytesReceived}
	case *yamuxSession:
		st := SessionStats{RTT: time.Duration(s.rtt.Load()), BytesSent: s.conn.out.Load(), BytesReceived: s.conn.in.Load()}
		if s.quic != nil {
			cs := s.quic.ConnectionStats()
			st.RTT, st.BytesSent, st.BytesReceived = cs.SmoothedRTT, cs.BytesSent, cs.BytesReceived
		}
		return st
	}
	return SessionStats{}
}

// ReplicaStats is one connected agent replica's session, at the relay.
type ReplicaStats struct {
	Agent     string
	Tag       string // ReplicaTag of its credential
	Transport string
	SessionStats
}

// Stats reports the session of every connected agent replica, sorted by
// agent and tag.
func (s *Server) Stats() []ReplicaStats {
	s.mu.Lock()
	var out []ReplicaStats
	sessions := make([]Session, 0, len(s.agents))
	for name, r := range s.agents {
		for tag, p := range r.byTag {
			// One row per session: a replica holds several when its
			// tunnels through a load balancer land here.
			for _, a := range p.conns {
				out = append(out, ReplicaStats{Agent: name, Tag: tag, Transport: a.status.Transport})
				sessions = append(sessions, a.sess)
			}
		}
	}
	s.mu.Unlock()
	// Outside the registry lock: quic-go takes its own.
	for i := range out {
		out[i].SessionStats = sessionStats(sessions[i])
	}
	slices.SortFunc(out, func(a, b ReplicaStats) int {
		if c := strings.Compare(a.Agent, b.Agent); c != 0 {
			return c
		}
		return strings.Compare(a.Tag, b.Tag)
	})
	return out
}

// clientStats counts a Client's sessions, for metrics.
type clientStats struct {
	sessions  atomic.Uint64 // authenticated sessions made
	fallbacks atomic.Uint64 // of them, over TCP in auto mode (QUIC failed)
}

func (c *Client) noteSession(cs *clientSession) {
	c.stats.sessions.Add(1)
	if c.cfg.Transport == TransportAuto && cs.Transport() == TransportTCPYamux {
		c.stats.fallbacks.Add(1)
	}
}

// TunnelStats is one relay's tunnel, at the agent.
type TunnelStats struct {
	RelayStatus
	// Reconnects counts the sessions made after the first; Fallbacks the
	// sessions over TCP that auto mode made because QUIC failed.
	Reconnects, Fallbacks uint64
	SessionStats
}

// Stats reports every relay's tunnel, ordered as Status.
func (m *Multi) Stats() []TunnelStats {
	st := m.Status()
	out := make([]TunnelStats, len(st))
	m.mu.Lock()
	clients := make([]*Client, len(st))
	for i, s := range st {
		out[i].RelayStatus = s
		if t := m.tunnels[s.Dial]; t != nil {
			clients[i] = t.client
		}
	}
	m.mu.Unlock()
	for i, c := range clients {
		if c == nil {
			continue
		}
		if n := c.stats.sessions.Load(); n > 1 {
			out[i].Reconnects = n - 1
		}
		out[i].Fallbacks = c.stats.fallbacks.Load()
		c.mu.Lock()
		cur := c.cur
		c.mu.Unlock()
		if cur != nil && out[i].Connected {
			out[i].SessionStats = sessionStats(cur)
		}
	}
	return out
}
