package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/devcert"
)

// Binaries built once by TestMain.
var (
	mcptunBin  string
	fixtureBin string
)

func buildBinaries(dir string) error {
	for _, b := range []struct {
		out       *string
		name, pkg string
	}{
		{&mcptunBin, "mcptun", "github.com/mcptun/mcptun/cmd/mcptun"},
		{&fixtureBin, "mcptest-server", "github.com/mcptun/mcptun/internal/mcptest/cmd/mcptest-server"},
	} {
		*b.out = filepath.Join(dir, b.name)
		args := []string{"build", "-o", *b.out}
		// The binaries under test are built with the race detector too,
		// unless MCPTUN_E2E_RACE=0 (faster local runs).
		if os.Getenv("MCPTUN_E2E_RACE") != "0" {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, b.pkg)...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build %s: %w", b.pkg, err)
		}
	}
	return nil
}

// logBuf keeps a process's output lines and wakes waiters on each new line.
type logBuf struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{}
}

func newLogBuf() *logBuf { return &logBuf{changed: make(chan struct{})} }

func (l *logBuf) add(line string) {
	l.mu.Lock()
	l.lines = append(l.lines, line)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *logBuf) snapshot() ([]string, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...), l.changed
}

func (l *logBuf) String() string {
	lines, _ := l.snapshot()
	return strings.Join(lines, "\n")
}

// proc is a child process of the test with its output captured.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *logBuf
	done chan struct{}
	err  error
}

func startProc(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: newLogBuf(), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	require.NoError(t, p.cmd.Start(), "start %s", name)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			p.out.add(sc.Text())
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		p.err = p.cmd.Wait()
		_ = pw.Close()
		<-scanDone
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if p.hasLine(regexp.MustCompile(`WARNING: DATA RACE`)) {
			t.Errorf("%s: the race detector found a data race", name)
		}
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, p.out)
		}
	})
	return p
}

// stop sends SIGTERM, waits for a clean exit, and kills the process group
// if it does not come.
func (p *proc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not stop within 10s of SIGTERM; killing", p.name)
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// waitLine waits until a line matching re appears and returns its submatches.
func (p *proc) waitLine(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		lines, changed := p.out.snapshot()
		for ; seen < len(lines); seen++ {
			if m := re.FindStringSubmatch(lines[seen]); m != nil {
				return m
			}
		}
		select {
		case <-changed:
		case <-p.done:
			lines, _ := p.out.snapshot()
			if len(lines) > seen {
				continue
			}
			t.Fatalf("%s exited (%v) before printing a line matching %q", p.name, p.err, re)
		case <-deadline:
			t.Fatalf("%s printed no line matching %q within %s", p.name, re, timeout)
		}
	}
}

func (p *proc) hasLine(re *regexp.Regexp) bool {
	lines, _ := p.out.snapshot()
	for _, l := range lines {
		if re.MatchString(l) {
			return true
		}
	}
	return false
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// deployment is a relay and an agent as separate processes, as in production.
type deployment struct {
	dir        string
	relay      *proc
	agent      *proc
	relayURL   string // http://127.0.0.1:PORT
	tunnelAddr string
	relayYAML  string
	agentYAML  string
}

const (
	agentToken  = "agent-secret-0123456789"
	clientToken = "client-secret-0123456789"
	scopedToken = "scoped-secret-0123456789"
	// throttledToken's client may make one exchange, then one per 1,000 s.
	throttledToken = "throttled-secret-0123456789"
)

type relayOpts struct {
	tunnelListen string // default 127.0.0.1:0
	disableQUIC  bool
	agentHash    string // default hash of agentToken
	// agentHashes, if set, are dc1's token hashes, one per replica.
	agentHashes []string
	extra       string // top-level YAML lines added to relay.yaml
	http        string // more keys of the http section, YAML flow style: "write_timeout: 5s"
	clients     string // more entries of the clients list, each "  - {...}\n"
}

func writeRelayConfig(t *testing.T, dir string, o relayOpts) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "relay.crt")); err != nil {
		certPEM, keyPEM, err := devcert.Generate("127.0.0.1", "localhost")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "relay.crt"), certPEM, 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "relay.key"), keyPEM, 0o600))
	}
	if o.tunnelListen == "" {
		o.tunnelListen = "127.0.0.1:0"
	}
	if o.agentHash == "" {
		o.agentHash = sha256Hex(agentToken)
	}
	dc1Hashes := fmt.Sprintf("%q", o.agentHash)
	if len(o.agentHashes) > 0 {
		q := make([]string, len(o.agentHashes))
		for i, h := range o.agentHashes {
			q[i] = fmt.Sprintf("%q", h)
		}
		dc1Hashes = "[" + strings.Join(q, ", ") + "]"
	}
	httpExtra := ""
	if o.http != "" {
		httpExtra = ", " + o.http
	}
	cfg := fmt.Sprintf(`tunnel: {listen: %q, cert_file: relay.crt, key_file: relay.key, disable_quic: %t}
http: {listen: "127.0.0.1:0"%s}
agents:  [{name: dc1, token_sha256: %s}, {name: dc2, token_sha256: %q}]
clients:
  - {name: ci, token_sha256: %q, allow: ["dc1/*", "dc2/*"]}
  - {name: scoped, token_sha256: %q, allow: ["*/wiki"]}
  - {name: throttled, token_sha256: %q, allow: ["dc1/*"], rate_limit: {requests_per_second: 0.001, burst: 1}}
%slog: {level: debug}
%s`, o.tunnelListen, o.disableQUIC, httpExtra, dc1Hashes, o.agentHash, sha256Hex(clientToken), sha256Hex(scopedToken), sha256Hex(throttledToken), o.clients, o.extra)
	p := filepath.Join(dir, "relay.yaml")
	require.NoError(t, os.WriteFile(p, []byte(cfg), 0o600))
	return p
}

var relayStarted = regexp.MustCompile(`msg="relay started" tunnel=(\S+) http=(\S+)`)

func (d *deployment) startRelay(t *testing.T) {
	t.Helper()
	d.relay = startProc(t, "relay", nil, mcptunBin, "relay", "--config", d.relayYAML)
	m := d.relay.waitLine(t, relayStarted, 20*time.Second)
	d.tunnelAddr, d.relayURL = m[1], m[2]
}

type agentOpts struct {
	transport string // auto, quic, tcp
	mux       string
	token     string
	servers   string // YAML list body; default: stdio fixture "notes" and HTTP fixture "wiki" at httpURL
	httpURL   string
	extra     string // top-level YAML lines added to agent.yaml
}

func (d *deployment) writeAgentConfig(t *testing.T, o agentOpts) {
	t.Helper()
	if o.token == "" {
		o.token = agentToken
	}
	if o.mux == "" {
		o.mux = "native"
	}
	require.NoError(t, os.WriteFile(filepath.Join(d.dir, "agent.token"), []byte(o.token+"\n"), 0o600))
	servers := o.servers
	if servers == "" {
		servers = fmt.Sprintf(`  - {name: notes, command: [%q, "--stdio"]}
`, fixtureBin)
		if o.httpURL != "" {
			servers += fmt.Sprintf("  - {name: wiki, url: %q, headers: {X-Internal: yes}}\n", o.httpURL)
		}
	}
	cfg := fmt.Sprintf(`name: dc1
relay: {address: %q, token_file: agent.token, ca_file: relay.crt, transport: %s, mux: %s}
servers:
%slog: {level: debug}
%s`, d.tunnelAddr, o.transport, o.mux, servers, o.extra)
	d.agentYAML = filepath.Join(d.dir, "agent.yaml")
	require.NoError(t, os.WriteFile(d.agentYAML, []byte(cfg), 0o600))
}

func (d *deployment) startAgent(t *testing.T) {
	t.Helper()
	d.agent = startProc(t, "agent", nil, mcptunBin, "agent", "--config", d.agentYAML)
}

// deploy starts a relay (ro) and an agent (ao) connected to it, each its
// own process, in a fresh directory.
func deploy(t *testing.T, ro relayOpts, ao agentOpts) *deployment {
	t.Helper()
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, ro)
	d.startRelay(t)
	d.writeAgentConfig(t, ao)
	d.startAgent(t)
	return d
}

// waitOnline polls the relay until the agent's endpoint stops answering
// 503, i.e. the agent is connected.
func (d *deployment) waitOnline(t *testing.T, server string) {
	t.Helper()
	waitStatus(t, d.relayURL+"/dc1/"+server+"/mcp", func(code int) bool { return code != http.StatusServiceUnavailable }, 30*time.Second)
}

func (d *deployment) waitOffline(t *testing.T, server string) {
	t.Helper()
	waitStatus(t, d.relayURL+"/dc1/"+server+"/mcp", func(code int) bool { return code == http.StatusServiceUnavailable }, 30*time.Second)
}

func waitStatus(t *testing.T, url string, ok func(int) bool, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	last := 0
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+clientToken)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			last = resp.StatusCode
			resp.Body.Close()
			if ok(last) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: condition not reached within %s (last status %d, err %v)", url, timeout, last, err)
		case <-tick.C:
		}
	}
}

// childrenOf lists the live processes whose parent is pid.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 2 && f[0] != "Z" && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// waitNoChildren waits until pid has no live children.
func waitNoChildren(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(childrenOf(pid)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still has children %v after %s", pid, childrenOf(pid), timeout)
		}
		<-tick.C
	}
}
