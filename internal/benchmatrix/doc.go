// Package benchmatrix is mcptun's end-to-end benchmark harness (`make
// bench`): it deploys the real binaries as separate processes, as in
// production, and measures them side by side on one machine.
//
// # What runs
//
// An HTTP MCP fixture (mcptest-server --http), one relay, and one agent per
// tunnel variant: native QUIC streams, TLS/TCP with yamux, and yamux over
// one QUIC stream. Each agent offers the HTTP fixture and a stdio fixture
// (a child per session, through the agent's bridge). The load generator is
// internal/loadgen running inside this process: closed-loop sessions, each
// sending the next tools/call when the previous answer is complete (or, in
// the paced section, when the schedule says it is due).
//
// Beside them, a plain tunnel (plain.go) for reference: a generic tunnel in
// the manner of frp, built on mcptun's own tunnel package, that copies each
// client connection's bytes through one stream and never parses HTTP or
// JSON-RPC. Its relay and agent are this harness's binary re-run in a role
// (RunRole), again separate processes. Measured in the same run, it says
// what being MCP-aware costs on the same transport and the same machine
// minute, which an absolute figure from another day cannot.
//
// # Sections
//
//   - matrix: the same load against the fixture directly and through each
//     path, at each session count. Every figure is given with its ratio to
//     direct, plus the CPU time per request of relay, agent and server.
//   - paced: every path offered the same load, on a fixed schedule
//     (loadgen's Rate), so that CPU per request compares like with like:
//     in the closed loop a slower path also runs at a lower rate, where
//     each wake-up of each process serves fewer requests. The stdio
//     bridge is judged against the HTTP path here.
//   - large: the time to fetch one large large_output result (16 MiB by
//     default) directly and through the tunnel.
//   - idle: memory per idle session at the relay and the agent, on a fresh
//     pair, in three phases that accumulate: stdio sessions (initialize
//     only), HTTP-upstream sessions (initialize only) and HTTP-upstream
//     sessions each holding its GET stream open.
//   - lossy: a network namespace behind an impaired link (delay and loss
//     each way; kernel netem, or a user-space emulator on TUN devices where
//     the kernel lacks netem), relay outside, agent and fixture inside;
//     the p50/p99 of small calls while a bulk transfer loops beside them,
//     on native QUIC, yamux over QUIC and yamux over TCP.
//
// # How CPU is accounted
//
// Only the measured phase counts. loadgen sends every session's setup
// before the first tools/call and starts its warm-up clock just before
// it; the harness sees that first tools/call leave (a RoundTripper in
// front of loadgen's transport), waits out the warm-up, snapshots each
// process's CPU, and snapshots again when the measured phase ends. A
// process's CPU is the sum of its threads' run time from
// /proc/PID/task/*/schedstat (nanoseconds), or utime+stime from
// /proc/PID/stat (10 ms ticks) when threads exited in between and took
// their run time with them. CPU per request is that difference divided by
// the requests loadgen counted in the same phase. The machine's /proc/stat
// gives how busy the CPUs were overall, so cells disturbed by other
// programs are flagged.
//
// Memory comes from the processes' own accounting: VmRSS (and Pss) from
// /proc, and the Go runtime's live heap, stacks and goroutine count read
// through each binary's opt-in pprof endpoint after a forced collection.
package benchmatrix
