package tunnel

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// gate stands between agent and relay on one host:port for UDP and TCP,
// as a firewall or a path would: it forwards both, and a test can drop
// every datagram (UDP blocked, or a peer that vanished) or stall every TCP
// connection (a peer that froze: bytes wait in the kernel's buffers).
type gate struct {
	t        *testing.T
	udp      net.PacketConn
	tcp      net.Listener
	relay    string
	dropUDP  atomic.Bool
	dropDown atomic.Bool // datagrams toward the agent only
	closeTCP atomic.Bool // new TCP connections are closed at once
	stallMu  sync.Mutex
	stalled  bool
	resumeCh chan struct{} // closed when a stall ends
	closed   chan struct{}

	mu    sync.Mutex
	peers map[string]*net.UDPConn // agent address → socket toward the relay
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newGate(t *testing.T, relayAddr string) *gate {
	t.Helper()
	tcp, udp, err := bind("127.0.0.1:0", true, true)
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{t: t, udp: udp, tcp: tcp, relay: relayAddr, resumeCh: make(chan struct{}),
		closed: make(chan struct{}), peers: map[string]*net.UDPConn{}, conns: map[net.Conn]struct{}{}}
	close(g.resumeCh)
	g.wg.Go(g.serveUDP)
	g.wg.Go(g.serveTCP)
	t.Cleanup(g.close)
	return g
}

func (g *gate) Addr() string { return g.udp.LocalAddr().String() }

// stall stops (true) or resumes (false) the TCP byte flow both ways.
func (g *gate) stall(on bool) {
	g.stallMu.Lock()
	defer g.stallMu.Unlock()
	if on == g.stalled {
		return
	}
	g.stalled = on
	if on {
		g.resumeCh = make(chan struct{})
	} else {
		close(g.resumeCh)
	}
}

// wait returns false once the gate is closed; while stalled it blocks.
func (g *gate) wait() bool {
	g.stallMu.Lock()
	ch := g.resumeCh
	g.stallMu.Unlock()
	select {
	case <-ch:
		return true
	case <-g.closed:
		return false
	}
}

func (g *gate) close() {
	select {
	case <-g.closed:
		return
	default:
	}
	close(g.closed)
	g.udp.Close()
	g.tcp.Close()
	g.mu.Lock()
	for _, p := range g.peers {
		p.Close()
	}
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

func (g *gate) track(c net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.closed:
		c.Close()
		return false
	default:
	}
	g.conns[c] = struct{}{}
	return true
}

func (g *gate) serveUDP() {
	raddr, err := net.ResolveUDPAddr("udp", g.relay)
	if err != nil {
		g.t.Error(err)
		return
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := g.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		if g.dropUDP.Load() {
			continue
		}
		g.mu.Lock()
		up := g.peers[from.String()]
		if up == nil {
			select {
			case <-g.closed:
				g.mu.Unlock()
				return
			default:
			}
			up, err = net.DialUDP("udp", nil, raddr)
			if err != nil {
				g.mu.Unlock()
				g.t.Error(err)
				return
			}
			g.peers[from.String()] = up
			g.wg.Go(func() { g.relayToAgent(up, from) })
		}
		g.mu.Unlock()
		_, _ = up.Write(buf[:n])
	}
}

func (g *gate) relayToAgent(up *net.UDPConn, agent net.Addr) {
	buf := make([]byte, 65536)
	for {
		n, err := up.Read(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				// ICMP "port unreachable" while the relay is down; go on.
				select {
				case <-g.closed:
					return
				default:
					continue
				}
			}
			return
		}
		if g.dropUDP.Load() || g.dropDown.Load() {
			continue
		}
		_, _ = g.udp.WriteTo(buf[:n], agent)
	}
}

func (g *gate) serveTCP() {
	for {
		c, err := g.tcp.Accept()
		if err != nil {
			return
		}
		if g.closeTCP.Load() {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", g.relay)
		if err != nil {
			c.Close()
			continue
		}
		if !g.track(c) || !g.track(up) {
			c.Close()
			up.Close()
			return
		}
		g.wg.Go(func() { g.pipe(up, c) })
		g.wg.Go(func() { g.pipe(c, up) })
	}
}

// pipe copies src to dst, holding bytes back while the gate is stalled.
func (g *gate) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		if !g.wait() {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			if !g.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
