package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// udpGate stands between agent and relay on one host:port, as a firewall
// would: TCP always passes, UDP passes unless blocked.
type udpGate struct {
	udp     net.PacketConn
	tcp     net.Listener
	relay   *net.UDPAddr
	relayTC string
	blocked atomic.Bool

	mu     sync.Mutex
	closed bool
	peers  map[string]*net.UDPConn
	conns  []net.Conn
	wg     sync.WaitGroup
}

// newUDPGate listens on one port for TCP and UDP and forwards to relayAddr.
func newUDPGate(t *testing.T, relayAddr string) *udpGate {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp", relayAddr)
	require.NoError(t, err)
	g := &udpGate{relay: raddr, relayTC: relayAddr, peers: map[string]*net.UDPConn{}}
	for range 20 { // the kernel picks TCP and UDP ports separately
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			g.tcp, g.udp = ln, pc
			break
		}
		ln.Close()
	}
	require.NotNil(t, g.udp, "no port free for both TCP and UDP")
	g.wg.Go(g.serveUDP)
	g.wg.Go(g.serveTCP)
	t.Cleanup(g.close)
	return g
}

func (g *udpGate) addr() string { return g.udp.LocalAddr().String() }

func (g *udpGate) close() {
	g.mu.Lock()
	g.closed = true
	g.udp.Close()
	g.tcp.Close()
	for _, p := range g.peers {
		p.Close()
	}
	for _, c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

func (g *udpGate) serveUDP() {
	buf := make([]byte, 65536)
	for {
		n, from, err := g.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		if g.blocked.Load() {
			continue
		}
		g.mu.Lock()
		up := g.peers[from.String()]
		if up == nil && !g.closed {
			if up, err = net.DialUDP("udp", nil, g.relay); err == nil {
				g.peers[from.String()] = up
				g.wg.Go(func() { g.back(up, from) })
			}
		}
		g.mu.Unlock()
		if up != nil {
			_, _ = up.Write(buf[:n])
		}
	}
}

func (g *udpGate) back(up *net.UDPConn, to net.Addr) {
	buf := make([]byte, 65536)
	for {
		n, err := up.Read(buf)
		if err != nil {
			g.mu.Lock()
			closed := g.closed
			g.mu.Unlock()
			if closed {
				return
			}
			continue // ICMP errors while the relay is away
		}
		if !g.blocked.Load() {
			_, _ = g.udp.WriteTo(buf[:n], to)
		}
	}
}

func (g *udpGate) serveTCP() {
	for {
		c, err := g.tcp.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", g.relayTC)
		if err != nil {
			c.Close()
			continue
		}
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		g.conns = append(g.conns, c, up)
		g.mu.Unlock()
		for _, p := range [][2]net.Conn{{c, up}, {up, c}} {
			g.wg.Go(func() {
				_, _ = io.Copy(p[0], p[1])
				p[0].Close()
				p[1].Close()
			})
		}
	}
}

// TestReturnToQUIC: an auto agent that fell back to TCP because UDP was
// blocked moves back to QUIC by itself once UDP passes, while a long call
// that started on TCP goes on and completes; the relay ends the TCP session
// only after that call.
func TestReturnToQUIC(t *testing.T) {
	fixture := startProc(t, "http-fixture", nil, fixtureBin, "--http", "127.0.0.1:0")
	httpURL := fixture.waitLine(t, regexp.MustCompile(`^listening (http://\S+)`), 20*time.Second)[1]
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{})
	d.startRelay(t)
	g := newUDPGate(t, d.tunnelAddr)
	g.blocked.Store(true)
	relayAddr := d.tunnelAddr
	d.tunnelAddr = g.addr() // the agent dials the gate
	d.writeAgentConfig(t, agentOpts{transport: "auto", httpURL: httpURL})
	d.tunnelAddr = relayAddr
	d.startAgent(t)
	d.relay.waitLine(t, regexp.MustCompile(`agent connected.*transport=tcp\+yamux`), 30*time.Second)
	d.waitOnline(t, "wiki")

	// A call that lasts across the move.
	c, _ := newClient(t, d.relayURL+"/dc1/wiki/mcp", clientToken)
	const ms = 20_003 // names this call in the fixture's log
	done := make(chan error, 1)
	var text string
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		req := mcp.CallToolRequest{}
		req.Params.Name = mcptest.ToolSleep
		req.Params.Arguments = map[string]any{"ms": ms}
		res, err := c.CallTool(ctx, req)
		if err == nil {
			text = textOf(res)
		}
		done <- err
	}()
	fixture.waitLine(t, regexp.MustCompile(fmt.Sprintf(`mcptest: sleeping.*ms=%d`, ms)), 20*time.Second)

	g.blocked.Store(false)
	unblocked := time.Now()
	d.relay.waitLine(t, regexp.MustCompile(`agent connected.*transport=quic `), 30*time.Second)
	t.Logf("agent moved to QUIC %v after UDP passed again", time.Since(unblocked).Round(time.Millisecond))
	require.False(t, d.relay.hasLine(regexp.MustCompile(`agent disconnected.*reason=replaced`)),
		"the relay ended the TCP session while a call was in flight on it")

	// New calls work (and go over QUIC: the relay routes to the newest
	// session).
	status, body := postOnce(d.relayURL+"/dc1/wiki/mcp", 30*time.Second)
	require.Equal(t, 200, status, body)

	select {
	case err := <-done:
		require.NoError(t, err, "the call that began on TCP")
		require.True(t, strings.Contains(text, fmt.Sprintf("slept %d ms", ms)), "result %q", text)
	case <-time.After(60 * time.Second):
		t.Fatal("the call that began on TCP never finished")
	}
	d.relay.waitLine(t, regexp.MustCompile(`agent disconnected.*transport=tcp\+yamux reason=replaced`), 10*time.Second)
	d.agent.waitLine(t, regexp.MustCompile(`the previous session has ended`), 10*time.Second)
	require.False(t, d.agent.hasLine(regexp.MustCompile(`another agent connected with the same name`)))
	require.False(t, d.relay.hasLine(regexp.MustCompile(`still had streams open`)), "the TCP session drained by itself, not at the grace bound")
}
