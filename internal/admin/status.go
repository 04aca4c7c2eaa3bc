package admin

import "time"

// Status is /api/status: one shape for both roles (Role says which; the
// other role's lists are empty).
type Status struct {
	Role     string    `json:"role"` // "relay" or "agent"
	Name     string    `json:"name,omitempty"`
	Version  string    `json:"version"`
	Started  time.Time `json:"started"`
	Ready    bool      `json:"ready"`
	NotReady string    `json:"not_ready,omitempty"`

	// Relay.
	Agents []AgentStatus `json:"agents,omitempty"`
	// Both: at the relay one entry per agent/server seen, at the agent
	// one per configured server.
	Servers []ServerStatus `json:"servers"`
	// Agent.
	Tunnels []TunnelStatus `json:"tunnels,omitempty"`
	// Errors are the last failures, newest first.
	Errors []Event `json:"errors"`
}

// AgentStatus is a connected agent, at the relay.
type AgentStatus struct {
	Name        string    `json:"name"`
	Replicas    int       `json:"replicas"`
	Transport   string    `json:"transport"`
	RTTSeconds  float64   `json:"rtt_seconds"`
	Remote      string    `json:"remote"`
	ConnectedAt time.Time `json:"connected_at"`
	Draining    bool      `json:"draining,omitempty"`
	Servers     []string  `json:"servers"`
	// Protocol is the tunnel protocol version the agent speaks; Version
	// its build, as it says ("" from agents too old to say).
	Protocol int    `json:"protocol"`
	Version  string `json:"version,omitempty"`
}

// ServerStatus is one MCP server's figures.
type ServerStatus struct {
	Agent string `json:"agent,omitempty"` // at the relay
	Name  string `json:"name"`
	Kind  string `json:"kind,omitempty"` // at the agent: stdio or http
	// Requests counts exchanges; Errors those answered with a status of
	// 400 or more (at the relay) or failed upstream (at the agent).
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
	// RatePerSecond is requests per second since the previous status.
	RatePerSecond float64 `json:"rate_per_second"`
	Streams       int     `json:"streams,omitempty"` // GET streams open (relay)
	Sessions      int     `json:"sessions"`          // agent
	Children      int     `json:"children"`          // agent, stdio servers
	Calls         int     `json:"calls,omitempty"`   // agent: requests in flight
	LastError     string  `json:"last_error,omitempty"`
	// Refusals, at the agent: exchanges refused for a limit, by reason.
	Refusals map[string]uint64 `json:"refusals,omitempty"`
	// Upstream, for a url server at the agent: "reachable", or why not.
	Upstream string `json:"upstream,omitempty"`
}

// TunnelStatus is one relay's tunnel, at the agent.
type TunnelStatus struct {
	Relay      string    `json:"relay"`
	Dial       string    `json:"dial"`
	State      string    `json:"state"` // up, down, removing, duplicate
	Transport  string    `json:"transport,omitempty"`
	RTTSeconds float64   `json:"rtt_seconds"`
	Since      time.Time `json:"since"`
	Reconnects uint64    `json:"reconnects"`
	Fallbacks  uint64    `json:"fallbacks"`
}

// Event is one failure.
type Event struct {
	At      time.Time `json:"at"`
	Agent   string    `json:"agent,omitempty"`
	Server  string    `json:"server,omitempty"`
	Status  int       `json:"status,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Message string    `json:"message,omitempty"`
}
