package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/cluster/natstest"
)

// A fleet behind one load balancer (issue 12, acceptance c): three relays
// sharing a registry in NATS (in this process) behind a round-robin
// TCP+UDP front on one port, one agent that knows only the front's address
// and opens relay.connections (2) tunnels through it. Requests sent to the
// relay without a tunnel are forwarded to one with; when a relay holding a
// tunnel is killed, calls carry on through the others.

// lbFront is a small layer-4 load balancer: TCP connections and UDP flows
// (by client address) to its port go to the backends in turn, as a
// Kubernetes Service does. remove takes a backend out, as the endpoint of
// a deleted pod is, and forgets its UDP flows (kube-proxy flushes their
// conntrack entries).
type lbFront struct {
	tcp net.Listener
	udp *net.UDPConn
	wg  sync.WaitGroup

	mu       sync.Mutex
	backends []string
	next     int
	flows    map[string]*lbFlow // by client address
	conns    map[net.Conn]string
	closed   bool
	tcpPicks map[string]int
	udpPicks map[string]int
}

type lbFlow struct {
	backend string
	up      *net.UDPConn
}

func startFront(t *testing.T, backends []string) *lbFront {
	t.Helper()
	f := &lbFront{backends: backends, flows: map[string]*lbFlow{}, conns: map[net.Conn]string{},
		tcpPicks: map[string]int{}, udpPicks: map[string]int{}}
	// One port for both, like the relay's.
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ln.Addr().(*net.TCPAddr).AddrPort()))
		if err != nil {
			ln.Close()
			continue
		}
		f.tcp, f.udp = ln, u
		break
	}
	require.NotNil(t, f.tcp, "no port free for both TCP and UDP")
	f.wg.Go(f.serveTCP)
	f.wg.Go(f.serveUDP)
	t.Cleanup(f.close)
	return f
}

func (f *lbFront) addr() string { return f.tcp.Addr().String() }

// pick returns the next backend in turn; the caller holds f.mu.
func (f *lbFront) pickLocked() string {
	if len(f.backends) == 0 {
		return ""
	}
	b := f.backends[f.next%len(f.backends)]
	f.next++
	return b
}

func (f *lbFront) remove(backend string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, b := range f.backends {
		if b == backend {
			f.backends = append(f.backends[:i:i], f.backends[i+1:]...)
			break
		}
	}
	for k, fl := range f.flows {
		if fl.backend == backend {
			fl.up.Close()
			delete(f.flows, k)
		}
	}
	for c, b := range f.conns {
		if b == backend {
			c.Close()
		}
	}
}

func (f *lbFront) close() {
	f.mu.Lock()
	f.closed = true
	f.tcp.Close()
	f.udp.Close()
	for _, fl := range f.flows {
		fl.up.Close()
	}
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// track registers c under backend; false once the front is closed.
func (f *lbFront) track(c net.Conn, backend string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = backend
	return true
}

func (f *lbFront) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *lbFront) serveTCP() {
	for {
		c, err := f.tcp.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		backend := f.pickLocked()
		f.tcpPicks[backend]++
		f.mu.Unlock()
		up, err := net.DialTimeout("tcp", backend, 2*time.Second)
		if err != nil || !f.track(c, backend) {
			c.Close()
			if up != nil {
				up.Close()
			}
			continue
		}
		if !f.track(up, backend) {
			f.untrack(c)
			up.Close()
			continue
		}
		f.wg.Go(func() { _, _ = io.Copy(up, c); f.untrack(up) })
		f.wg.Go(func() { _, _ = io.Copy(c, up); f.untrack(c) })
	}
}

func (f *lbFront) serveUDP() {
	buf := make([]byte, 64<<10)
	for {
		n, client, err := f.udp.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		key := client.String()
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			return
		}
		fl := f.flows[key]
		if fl == nil {
			backend := f.pickLocked()
			baddr, err := net.ResolveUDPAddr("udp", backend)
			if err != nil {
				f.mu.Unlock()
				continue
			}
			up, err := net.DialUDP("udp", nil, baddr)
			if err != nil {
				f.mu.Unlock()
				continue
			}
			fl = &lbFlow{backend: backend, up: up}
			f.flows[key] = fl
			f.udpPicks[backend]++
			f.wg.Go(func() { f.flowBack(key, fl, client) })
		}
		f.mu.Unlock()
		_, _ = fl.up.Write(buf[:n])
	}
}

// flowBack carries a flow's answers back to its client until the flow is
// closed or its backend is gone (a connected UDP socket reads
// ECONNREFUSED once the backend's port is closed).
func (f *lbFront) flowBack(key string, fl *lbFlow, client *net.UDPAddr) {
	buf := make([]byte, 64<<10)
	for {
		n, err := fl.up.Read(buf)
		if err != nil {
			f.mu.Lock()
			if f.flows[key] == fl {
				delete(f.flows, key)
			}
			f.mu.Unlock()
			fl.up.Close()
			return
		}
		if _, err := f.udp.WriteToUDP(buf[:n], client); err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

type fleetRelay struct {
	name, tunnel, url string
	p                 *proc
}

// grep returns the lines that match re.
func (l *logBuf) grep(re *regexp.Regexp) []string {
	lines, _ := l.snapshot()
	var out []string
	for _, line := range lines {
		if re.MatchString(line) {
			out = append(out, line)
		}
	}
	return out
}

var agentConnectedTo = regexp.MustCompile(`msg="tunnel: agent connected" .*agent=dc1 `)

func TestFleetBehindOneAddress(t *testing.T) {
	dir := t.TempDir()
	natsURL := natstest.Start(t)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cluster.secret"), []byte(strings.Repeat("fleet-secret-", 4)+"\n"), 0o600))
	var relays []*fleetRelay
	for i := range 3 {
		name := fmt.Sprintf("r%d", i+1)
		p := writeRelayConfig(t, dir, relayOpts{extra: fmt.Sprintf(
			"cluster: {name: %s, nats_url: %q, listen: \"127.0.0.1:0\", secret_file: cluster.secret}\n", name, natsURL)})
		cfg := filepath.Join(dir, name+".yaml")
		require.NoError(t, os.Rename(p, cfg))
		r := startProc(t, name, nil, mcptunBin, "relay", "--config", cfg)
		m := r.waitLine(t, relayStarted, 20*time.Second)
		relays = append(relays, &fleetRelay{name: name, tunnel: m[1], url: m[2], p: r})
	}
	for _, r := range relays {
		// Each relay has heard of the two others.
		r.p.waitLines(t, regexp.MustCompile(`msg="cluster: relay joined the fleet"`), 2, 10*time.Second)
	}
	front := startFront(t, []string{relays[0].tunnel, relays[1].tunnel, relays[2].tunnel})

	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.token"), []byte(agentToken+"\n"), 0o600))
	agentYAML := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(agentYAML, []byte(fmt.Sprintf(`name: dc1
relay: {address: %q, connections: 2, token_file: agent.token, ca_file: relay.crt}
servers:
  - {name: notes, command: [%q, "--stdio"]}
log: {level: debug}
`, front.addr(), fixtureBin)), 0o600))
	agent := startProc(t, "agent", nil, mcptunBin, "agent", "--config", agentYAML)
	agent.waitLines(t, regexp.MustCompile(`msg="tunnel: relay up"`), 2, 30*time.Second)
	require.False(t, agent.hasLine(regexp.MustCompile(`two addresses lead to one relay`)))

	holders := func() map[string]bool {
		out := map[string]bool{}
		for _, r := range relays {
			if r.p.hasLine(agentConnectedTo) {
				out[r.name] = true
			}
		}
		return out
	}
	var held map[string]bool
	require.Eventually(t, func() bool {
		held = holders()
		n := 0
		for _, r := range relays {
			n += len(r.p.out.grep(agentConnectedTo))
		}
		return n >= 2
	}, 10*time.Second, 20*time.Millisecond, "two tunnels at the relays")
	t.Logf("tunnels at %v (UDP flows %v, TCP %v)", held, front.udpPicks, front.tcpPicks)
	var idle *fleetRelay
	for _, r := range relays {
		if !held[r.name] {
			idle = r
		}
	}
	require.NotNil(t, idle, "round robin put the two tunnels on every relay?")

	// A session opened through the relay without a tunnel: forwarded.
	mcp := func(r *fleetRelay) string { return r.url + "/dc1/notes/mcp" }
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The registry may still be catching up with the agent's tunnels.
	var sid string
	for deadline := time.Now().Add(10 * time.Second); ; {
		r, err := post(ctx, mcp(idle), "", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"fleet","version":"1"}}}`)
		if sid = r.Header.Get("Mcp-Session-Id"); err == nil && r.StatusCode == 200 && sid != "" {
			break
		}
		require.True(t, time.Now().Before(deadline), "initialize through the relay without a tunnel: %v %d %s", err, r.StatusCode, r.Body)
		time.Sleep(50 * time.Millisecond) // pacing a client's retries
	}
	r := rawPost(t, mcp(idle), clientToken, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	require.Equal(t, 202, r.StatusCode, "initialized: %s", r.Body)
	id := 10
	call := func(r *fleetRelay, text string) (rawResp, error) {
		id++
		return post(ctx, mcp(r), sid, echoCall(id, text))
	}
	for _, rl := range relays {
		for i := range 3 {
			text := fmt.Sprintf("%s %d", rl.name, i)
			resp, err := call(rl, text)
			require.True(t, callOK(resp, err, text), "call through %s: %v %d %s", rl.name, err, resp.StatusCode, resp.Body)
			via := resp.Header.Get("X-Mcptun-Via")
			if held[rl.name] {
				require.Empty(t, via, "%s holds a tunnel and served the call itself", rl.name)
			} else {
				require.True(t, held[via], "%s forwarded to %q, which holds no tunnel (holders %v)", rl.name, via, held)
			}
		}
	}
	require.True(t, idle.p.hasLine(regexp.MustCompile(`msg="cluster: relay joined the fleet"`)))

	// Kill a relay holding a tunnel; its endpoint leaves the front.
	var victim *fleetRelay
	for _, r := range relays {
		if held[r.name] {
			victim = r
			break
		}
	}
	upBefore := len(agent.out.grep(regexp.MustCompile(`msg="tunnel: relay up"`)))
	require.NoError(t, victim.p.cmd.Process.Signal(syscall.SIGKILL))
	killed := time.Now()
	front.remove(victim.tunnel)
	var live []*fleetRelay
	for _, r := range relays {
		if r != victim {
			live = append(live, r)
		}
	}
	// Each surviving relay: retry until a call succeeds, then every call
	// does.
	for _, rl := range live {
		var failed []string
		for {
			require.Less(t, time.Since(killed), 20*time.Second, "no call through %s succeeded within 20 s of the kill", rl.name)
			resp, err := call(rl, "after")
			if callOK(resp, err, "after") {
				break
			}
			failed = append(failed, fmt.Sprintf("%d %s", resp.StatusCode, reason(resp.Body)))
			time.Sleep(20 * time.Millisecond) // a client's retry pacing, not a wait for a condition
		}
		t.Logf("through %s: first success %v after the kill, failed calls before: %q", rl.name, time.Since(killed).Round(time.Millisecond), failed)
		if len(held) == 2 {
			// The agent's other tunnel is up: the relay holding it fails
			// nothing, and the relay without a tunnel at most the one call
			// that finds the dead relay (its link would not open, or broke
			// under the call): it then skips that relay.
			switch {
			case held[rl.name]:
				require.Empty(t, failed, "calls through %s, which holds the agent's other tunnel", rl.name)
			default:
				require.LessOrEqual(t, len(failed), 1, "calls through %s failed after the dead relay was found", rl.name)
			}
		}
	}
	// The agent reconnects its lost tunnel (through the front, to a live
	// relay): failure detection, then a new flow.
	agent.waitLines(t, regexp.MustCompile(`msg="tunnel: relay up"`), upBefore+1, 20*time.Second)
	t.Logf("the agent had its second tunnel back %v after the kill", time.Since(killed).Round(time.Millisecond))
	for _, rl := range live {
		for i := range 5 {
			text := fmt.Sprintf("%s after %d", rl.name, i)
			var resp rawResp
			var err error
			// The registry may still list the dead relay for the
			// forwarded ones (until its entry expires): one retry each.
			for try := 0; try < 2; try++ {
				if resp, err = call(rl, text); callOK(resp, err, text) {
					break
				}
			}
			require.True(t, callOK(resp, err, text), "call %d through %s after the reconnect: %v %d %s", i, rl.name, err, resp.StatusCode, resp.Body)
		}
	}
	require.Error(t, victim.p.waitExit(t, 10*time.Second), "the victim was killed")

	// A relay told to stop leaves the fleet at once (it does not wait for
	// its entry to expire), and exits cleanly.
	leaving, staying := live[0], live[1]
	require.NoError(t, leaving.p.cmd.Process.Signal(syscall.SIGTERM))
	staying.p.waitLine(t, regexp.MustCompile(`msg="cluster: relay left the fleet" .*name=`+leaving.name+`\b`), 5*time.Second)
	require.NoError(t, leaving.p.waitExit(t, 20*time.Second), "%s exit status after SIGTERM", leaving.name)
}
