// Package procs runs the child processes of mcptun's harnesses (the
// benchmark, internal/benchmatrix, and the fault suite, internal/faults)
// and reads their accounting: CPU, memory, descriptors and children from
// /proc, and the Go runtime's own figures through a binary's opt-in pprof
// endpoint.
package procs
