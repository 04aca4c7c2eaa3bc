package procs

import "regexp"

// Lines that mcptun and the fixture server print once they are up, with
// the addresses a harness needs (for Process.WaitLine). One place, so a
// changed log line breaks every harness alike.
var (
	// RelayStarted: the relay's tunnel address and its HTTP base URL.
	RelayStarted = regexp.MustCompile(`msg="relay started" tunnel=(\S+) http=(\S+)`)
	// PprofListening: the base URL of a process's pprof server.
	PprofListening = regexp.MustCompile(`msg="pprof listening" addr=(http://\S+?)/debug/pprof/`)
	// AgentConnected: an agent's tunnel is up, and its transport.
	AgentConnected = regexp.MustCompile(`msg="tunnel: connected to relay".* transport=(\S+)`)
	// FixtureListening: the HTTP fixture server's base URL.
	FixtureListening = regexp.MustCompile(`^listening (http://\S+)`)
)
