// Package faults is mcptun's fault suite (`make faults`; one round of each
// fault runs in `make test` as TestFaultsShort). It deploys the real
// binaries as separate processes on 127.0.0.1 — a relay, an agent over
// QUIC and one over TCP, each offering the stdio fixture (a child per
// session) and the HTTP fixture (the upstream) — and breaks one thing at a
// time under load: the relay, each agent, a stdio child, the upstream;
// killed, frozen (SIGSTOP/SIGCONT) or terminated, then restarted.
//
// # What a call is, and what counts against the deployment
//
// Each client session calls the fixture's record_nonce tool back to back with
// a nonce of its own; the server appends the nonce to a log shared by
// every fixture process before it answers, so the log says how often each
// call ran. The clients behave as a careful client must, and no more:
//
//   - A call is sent again (same nonce) only when its answer promises it
//     did not run: an HTTP status other than 200 whose error.data.reason
//     does not say "may have run" (isOutcomeUnknown: *outcome_unknown,
//     relay_shutdown, agent_shutdown), a connection refused, or a 404 for
//     a session that is gone (after a new initialize). That is the
//     contract of the README's reason table. Go's HTTP client never
//     re-sends a POST it has written, so any second run is the
//     deployment's.
//   - An answer whose reason says it may have run, or a connection cut
//     after the request was sent, is "outcome unknown": reported, not
//     retried, not a failure.
//   - An attempt with no answer within Options.CallDeadline is lost.
//
// A round fails when a call is lost, a nonce ran twice, a call given up on
// "did not run" answers had run (the same false promise, unexposed only
// because every retry failed too), a call answered OK never ran, or a
// resource did not return.
//
// # Resources
//
// After the initial warm-up, and after each fault, the load stops, every
// session is deleted and the clients' idle connections closed; then each
// relay and agent is measured: RSS (/proc), goroutines (its pprof
// endpoint), descriptors (/proc/PID/fd), children (agents). The figures
// after a fault must come back, within Options.margins and Options.Settle,
// to those before it (for a process the fault restarted: its
// predecessor's), and no stdio child alive before the fault may outlive
// it. Each round's "after" is the next round's "before".
package faults
