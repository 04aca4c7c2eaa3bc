package leakcheck

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startOrphan starts argv through a shell that backgrounds it and exits,
// in a session of its own: the process is reparented and in another
// process group, as a stdio child whose agent died. It returns its PID.
func startOrphan(t *testing.T, env []string, argv ...string) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", `"$@" </dev/null >/dev/null 2>&1 & echo $!`, "sh")
	cmd.Args = append(cmd.Args, argv...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.Output()
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

func find(procs []Process, pid int) (Process, bool) {
	for _, p := range procs {
		if p.PID == pid {
			return p, true
		}
	}
	return Process{}, false
}

func TestProcesses(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc")
	}
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "tmp"), 0o700))
	sleep, err := exec.LookPath("sleep")
	require.NoError(t, err)
	path := "PATH=" + os.Getenv("PATH")

	// A child of ours.
	child := exec.Command(sleep, "60")
	require.NoError(t, child.Start())
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })

	// An orphan that carries the run's TMPDIR.
	byEnv := startOrphan(t, []string{path, "TMPDIR=" + filepath.Join(dir, "tmp")}, sleep, "60")

	// An orphan without it, running a binary from the run's directory.
	b, err := os.ReadFile(sleep)
	require.NoError(t, err)
	own := filepath.Join(dir, "fixture")
	require.NoError(t, os.WriteFile(own, b, 0o700))
	byExe := startOrphan(t, []string{path}, own, "60")

	// Someone else's: neither.
	other := startOrphan(t, []string{path, "TMPDIR=/elsewhere"}, sleep, "60")

	var procs []Process
	require.Eventually(t, func() bool {
		procs = Processes(dir)
		_, a := find(procs, child.Process.Pid)
		_, b := find(procs, byEnv)
		_, c := find(procs, byExe)
		return a && b && c
	}, 5*time.Second, 10*time.Millisecond, "the run's three processes are found")
	p, _ := find(procs, child.Process.Pid)
	require.Equal(t, "descendant", p.Why)
	p, _ = find(procs, byEnv)
	require.Equal(t, "environment", p.Why)
	require.Contains(t, p.Cmdline, "sleep 60")
	p, _ = find(procs, byExe)
	require.Equal(t, "executable", p.Why)
	_, found := find(procs, other)
	require.False(t, found, "another run's process is not ours")

	// Check reports them and kills them.
	err = Check(dir, Options{Grace: 100 * time.Millisecond})
	require.Error(t, err)
	for _, pid := range []int{byEnv, byExe} {
		require.Contains(t, err.Error(), fmt.Sprintf("process left: pid %d", pid))
	}
	err = child.Wait()
	require.Error(t, err, "the child was killed")
	require.Eventually(t, func() bool { return len(Processes(dir)) == 0 }, 5*time.Second, 10*time.Millisecond,
		"Check killed what it reported")
	_, ok := find(Processes("/nonexistent-run"), other)
	require.False(t, ok)
	require.NoError(t, syscall.Kill(other, 0), "another run's process is left alone")
}

func TestListening(t *testing.T) {
	if _, err := os.Stat("/proc/self/net/tcp"); err != nil {
		t.Skip("needs /proc")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	// A connected TCP socket is not a listener.
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	s, err := ln.Accept()
	require.NoError(t, err)

	got := Listening()
	require.Contains(t, got, "tcp "+ln.Addr().String())
	require.Contains(t, got, "udp "+pc.LocalAddr().String())
	require.Len(t, got, 2, "%v", got)

	require.NoError(t, ln.Close())
	require.NoError(t, pc.Close())
	require.NoError(t, c.Close())
	require.NoError(t, s.Close())
	require.Empty(t, Listening())
}
