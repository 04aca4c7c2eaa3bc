package tunnel

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mcptun/mcptun/internal/devcert"
)

// startMulti runs a Multi with an echo server on its listener, stopped at
// the end of the test.
func startMulti(t *testing.T, cfg MultiConfig, prefix string) (*Multi, *logBuf) {
	t.Helper()
	logger, lb := newLog(t, "multi agent")
	cfg.Client.Logger = logger
	m, err := NewMulti(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	runErr := make(chan error, 1)
	wg.Go(func() { runErr <- m.Run(ctx) })
	wg.Go(func() { serveEcho(m.Listener(), prefix) })
	t.Cleanup(func() {
		cancel()
		m.Listener().Close()
		wg.Wait()
		if err := <-runErr; err != nil {
			t.Errorf("Run returned %v, want nil after cancel", err)
		}
	})
	return m, lb
}

func connectedTo(m *Multi) map[string]bool {
	out := map[string]bool{}
	for _, s := range m.Status() {
		out[s.Dial] = s.Connected
	}
	return out
}

// One agent, two relays: a tunnel to each, both serving the same
// listener; one relay's loss leaves the other's tunnel alone, and the lost
// one comes back on its own. Drain reaches both.
func TestMultiRelays(t *testing.T) {
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			ctx := testCtx(t)
			r1 := startRelay(t, ServerConfig{})
			r2 := startRelay(t, ServerConfig{})
			cc := agentConfig(t, "")
			cc.Transport = transport
			m, _ := startMulti(t, MultiConfig{Client: cc, Addresses: []string{r1.Addr(), r2.Addr()}}, "a:")
			r1.waitEvent(t, "lab up")
			r2.waitEvent(t, "lab up")
			if err := m.WaitConnected(ctx, 2); err != nil {
				t.Fatalf("WaitConnected(2): %v; status %+v", err, m.Status())
			}
			for i, r := range []*relay{r1, r2} {
				if got, err := roundTrip(ctx, r, testAgent, []byte("x")); err != nil || string(got) != "a:x" {
					t.Fatalf("through relay %d: %q, %v", i+1, got, err)
				}
			}
			st := m.Status()
			if len(st) != 2 || !st[0].Connected || !st[1].Connected || st[0].Transport == "" {
				t.Fatalf("Status() = %+v, want two connected tunnels", st)
			}

			// Relay 1 goes away; relay 2's tunnel is untouched.
			before, _ := r2.Agent(testAgent)
			addr1 := r1.Addr()
			r1.Close()
			waitFor(t, "the agent to see relay 1 down", func() bool {
				c := connectedTo(m)
				return !c[addr1] && c[r2.Addr()]
			})
			if got, err := roundTrip(ctx, r2, testAgent, []byte("y")); err != nil || string(got) != "a:y" {
				t.Fatalf("through relay 2 after relay 1 went: %q, %v", got, err)
			}
			// Relay 1 is back: its tunnel reconnects on its own.
			r1b := startRelay(t, ServerConfig{Listen: addr1})
			r1b.waitEvent(t, "lab up")
			if got, err := roundTrip(ctx, r1b, testAgent, []byte("z")); err != nil || string(got) != "a:z" {
				t.Fatalf("through relay 1 back: %q, %v", got, err)
			}
			if after, ok := r2.Agent(testAgent); !ok || !after.ConnectedAt.Equal(before.ConnectedAt) {
				t.Fatalf("relay 2's session changed with relay 1's loss: %+v, then %+v (%v)", before, after, ok)
			}

			if err := m.Drain(); err != nil {
				t.Fatalf("Drain: %v", err)
			}
			waitFor(t, "both relays to hear the agent drains", func() bool {
				return r1b.AgentDraining(testAgent) && r2.AgentDraining(testAgent)
			})
		})
	}
}

// fakeDNS answers LookupNetIP from a table the test changes.
type fakeDNS struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	fail    error
	lookups int
}

func (f *fakeDNS) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	if network != "ip" {
		return nil, fmt.Errorf("fakeDNS: network %q", network)
	}
	if f.fail != nil {
		return nil, f.fail
	}
	a, ok := f.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return a, nil
}

func (f *fakeDNS) set(host string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.answers == nil {
		f.answers = map[string][]netip.Addr{}
	}
	f.answers[host] = nil
	for _, a := range addrs {
		f.answers[host] = append(f.answers[host], netip.MustParseAddr(a))
	}
}

func (f *fakeDNS) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *fakeDNS) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lookups
}

// relayPair starts two relays with cert on 127.0.0.1:P and 127.0.0.2:P (one
// port, as behind one DNS name), trying other ports if P is taken on
// 127.0.0.2.
func relayPair(t *testing.T, cert tls.Certificate) (r1, r2 *relay, port string) {
	t.Helper()
	for range 5 {
		r1, err := listenRelay(t, "127.0.0.1:0", cert)
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(r1.Addr())
		r2, err := listenRelay(t, "127.0.0.2:"+port, cert)
		if err == nil {
			return r1, r2, port
		}
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			r1.Close()
			t.Skip("127.0.0.2 is not a local address on this system (it is on Linux)")
		}
		t.Logf("127.0.0.2:%s: %v; trying another port", port, err)
		r1.Close()
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil, ""
}

// listenRelay is startRelay with another certificate, returning Listen's
// error.
func listenRelay(t *testing.T, addr string, cert tls.Certificate) (*relay, error) {
	logger, lb := newLog(t, "relay "+addr)
	r := &relay{log: lb, events: make(chan string, 100)}
	s, err := Listen(context.Background(), ServerConfig{
		Listen:    addr,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		Agents:    []AgentCredential{{Name: testAgent, TokenSHA256: sha256.Sum256([]byte(testToken))}},
		Logger:    logger,
		OnAgentChange: func(name string, up bool) {
			state := "down"
			if up {
				state = "up"
			}
			r.events <- name + " " + state
		},
	})
	if err != nil {
		return nil, err
	}
	r.Server = s
	t.Cleanup(func() { s.Close() })
	return r, nil
}

// A relay name whose DNS answer holds several addresses is several relays,
// verified by the name (not the address); a relay added to DNS gets a
// tunnel, one removed has its tunnel drained and closed; a failed lookup
// changes nothing; A and AAAA records of one name are not two relays.
func TestMultiDNS(t *testing.T) {
	const name = "relays.test"
	certPEM, keyPEM, err := devcert.Generate(name)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	// Verified by chain and name: a tunnel that sent the address as the
	// server name would fail its handshake.
	tlsCfg, err := ClientTLS("", ca, "")
	if err != nil {
		t.Fatal(err)
	}
	r1, r2, port := relayPair(t, cert)
	dial1, dial2 := "127.0.0.1:"+port, "127.0.0.2:"+port
	ctx := testCtx(t)

	dns := &fakeDNS{}
	dns.set(name, "127.0.0.1", "::1") // one relay with an A and an AAAA record
	cc := agentConfig(t, "")
	cc.TLSConfig = tlsCfg
	cc.Transport = TransportQUIC
	m, lb := startMulti(t, MultiConfig{
		Client:          cc,
		Addresses:       []string{net.JoinHostPort(name, port)},
		Resolver:        dns,
		ResolveInterval: 20 * time.Millisecond,
		RemoveGrace:     200 * time.Millisecond,
	}, "a:")
	r1.waitEvent(t, "lab up")
	if got, err := roundTrip(ctx, r1, testAgent, []byte("1")); err != nil || string(got) != "a:1" {
		t.Fatalf("through relay 1: %q, %v", got, err)
	}
	if st := m.Status(); len(st) != 1 || st[0].Dial != dial1 || st[0].Address != name+":"+port {
		t.Fatalf("Status() = %+v, want one tunnel to %s (IPv4 only)", st, dial1)
	}

	// A second relay joins the name.
	dns.set(name, "127.0.0.2", "127.0.0.1")
	r2.waitEvent(t, "lab up")
	if got, err := roundTrip(ctx, r2, testAgent, []byte("2")); err != nil || string(got) != "a:2" {
		t.Fatalf("through relay 2: %q, %v", got, err)
	}
	if err := m.WaitConnected(ctx, 2); err != nil {
		t.Fatalf("WaitConnected(2): %v; status %+v", err, m.Status())
	}

	// DNS fails for a while: nothing is dropped.
	dns.setFail(errors.New("SERVFAIL"))
	n := dns.count()
	waitFor(t, "lookups to go on failing", func() bool { return dns.count() >= n+3 })
	if st := m.Status(); len(st) != 2 || st[0].Removing || st[1].Removing || !st[0].Connected || !st[1].Connected {
		t.Fatalf("a failed lookup changed the tunnels: %+v", st)
	}
	if !strings.Contains(lb.String(), "cannot resolve relay; keeping its tunnels") {
		t.Error("the failed lookup is not logged")
	}
	dns.setFail(nil)

	// Relay 1 leaves the name: its tunnel drains, then closes.
	dns.set(name, "127.0.0.2")
	waitFor(t, "relay 1 to hear the agent drains there", func() bool { return r1.AgentDraining(testAgent) })
	if got, err := roundTrip(ctx, r2, testAgent, []byte("3")); err != nil || string(got) != "a:3" {
		t.Fatalf("through relay 2 while relay 1 is removed: %q, %v", got, err)
	}
	if r2.AgentDraining(testAgent) {
		t.Fatal("relay 2 was told the agent drains")
	}
	r1.waitEvent(t, "lab down")
	waitFor(t, "the removed tunnel to leave Status", func() bool {
		st := m.Status()
		return len(st) == 1 && st[0].Dial == dial2 && st[0].Connected
	})
}

// Bad addresses are refused by NewMulti with the address named.
func TestNewMultiErrors(t *testing.T) {
	cc := agentConfig(t, "")
	for _, tc := range []struct {
		addrs []string
		want  string
	}{
		{nil, "no relay address"},
		{[]string{"127.0.0.1:1", "nohost"}, `"nohost" is not host:port`},
		{[]string{":7443"}, `":7443" is not host:port`},
		{[]string{"r:1", "R:1"}, `"R:1" is listed twice`},
	} {
		_, err := NewMulti(MultiConfig{Client: cc, Addresses: tc.addrs})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewMulti(%q) = %v, want an error containing %q", tc.addrs, err, tc.want)
		}
	}
	bad := cc
	bad.Name = "bad name"
	if _, err := NewMulti(MultiConfig{Client: bad, Addresses: []string{"127.0.0.1:1"}}); err == nil || !strings.Contains(err.Error(), "invalid agent name") {
		t.Errorf("NewMulti with a bad name = %v", err)
	}
}

// tcpForward forwards TCP connections from a new 127.0.0.1 port to target,
// as a load balancer in front of one relay would; stopped at the end of
// the test.
func tcpForward(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			return false // stopped
		}
		conns = append(conns, c)
		return true
	}
	conns = []net.Conn{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil || !track(c) || !track(up) {
				c.Close()
				if up != nil {
					up.Close()
				}
				continue
			}
			wg.Go(func() { io.Copy(up, c); up.Close() })
			wg.Go(func() { io.Copy(c, up); c.Close() })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// Two addresses that lead to one relay (a load balancer's) get one
// tunnel: two would replace each other at the relay over and over.
func TestMultiOneRelayTwoAddresses(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	_, directPort, _ := net.SplitHostPort(r.Addr())
	_, fwdPort, _ := net.SplitHostPort(tcpForward(t, r.Addr()))
	dns := &fakeDNS{}
	dns.set("a.test", "127.0.0.1")
	dns.set("b.test", "127.0.0.1")
	cc := agentConfig(t, "")
	cc.Transport = TransportTCP
	m, lb := startMulti(t, MultiConfig{
		Client:          cc,
		Addresses:       []string{"a.test:" + directPort, "b.test:" + fwdPort},
		Resolver:        dns,
		ResolveInterval: 20 * time.Millisecond,
	}, "a:")
	oneKept := func() bool {
		st := m.Status()
		return len(st) == 2 && st[0].Connected != st[1].Connected &&
			(st[0].DuplicateOf == st[1].Dial || st[1].DuplicateOf == st[0].Dial)
	}
	waitFor(t, "one tunnel up and the other stopped as its duplicate", oneKept)
	// Resolving goes on; the stopped tunnel stays stopped while the
	// other is up, so the relay replaced the agent's session at most
	// once (when the second tunnel first came up).
	n := dns.count()
	waitFor(t, "five more lookups", func() bool { return dns.count() >= n+10 })
	if got := r.log.count("agent session replaced"); got > 1 {
		t.Fatalf("the relay replaced the agent's session %d times", got)
	}
	if got, err := roundTrip(ctx, r, testAgent, []byte("x")); err != nil || string(got) != "a:x" {
		t.Fatalf("through the relay: %q, %v", got, err)
	}
	if !strings.Contains(lb.String(), "two addresses lead to one relay") {
		t.Error("the duplicate is not logged")
	}

	// The kept tunnel goes down: the stopped address is tried again.
	r.Close()
	r2 := startRelay(t, ServerConfig{Listen: r.Addr()})
	r2.waitEvent(t, "lab up")
	waitFor(t, "the stopped address to be tried again", func() bool {
		return strings.Contains(lb.String(), "retrying an address that led to the relay of a tunnel now down")
	})
	// Both lead to the restarted relay: whichever connects second
	// replaces the other's session there (once), and that one stops.
	waitFor(t, "one tunnel kept again", oneKept)
	// Replaced, not pooled beside it: the relay must not go on choosing
	// the session the agent is stopping.
	if got := r2.log.count("agent session replaced"); got != 1 {
		t.Fatalf("the restarted relay replaced the agent's session %d times, want 1 (two listed addresses are not a pool)", got)
	}
	if got, err := roundTrip(ctx, r2, testAgent, []byte("y")); err != nil || string(got) != "a:y" {
		t.Fatalf("through the restarted relay: %q, %v", got, err)
	}
}
