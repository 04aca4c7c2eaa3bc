//go:build unix && !linux

package mcpproxy

import "syscall"

// sysProcAttr puts the child in its own process group. Outside Linux there
// is no Pdeathsig: a child outlives an agent that is killed with SIGKILL.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
