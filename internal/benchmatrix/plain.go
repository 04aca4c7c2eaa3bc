package benchmatrix

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"syscall"

	"github.com/mcptun/mcptun/tunnel"
)

// The plain tunnel is the reference the performance targets are stated
// against: a generic TCP tunnel in the manner of frp, which never parses
// HTTP or JSON-RPC. Each client connection to the plain relay's front port
// becomes one tunnel stream for its lifetime, the plain agent dials the
// upstream for each stream, and bytes are copied both ways (16 KiB
// buffers, as frp's io.Join). It uses mcptun's own tunnel package, so the
// session, QUIC and yamux settings are the same as mcptun's: the
// difference between a plain path and the matching mcptun path is what
// being MCP-aware costs (HTTP heads, admission, routing, the MCP proxy).
//
// Relay and agent run as separate processes, as mcptun's do: the
// benchmark binary re-runs itself in a role (RunRole).

// Roles of the benchmark binary's helper processes.
const (
	RolePlainRelay = "plain-relay"
	RolePlainAgent = "plain-agent"
)

var (
	plainRelayRe = regexp.MustCompile(`msg="plain relay started" tunnel=(\S+) front=(\S+)`)
	plainAgentRe = regexp.MustCompile(`msg="plain agent connected" transport=(\S+)`)
)

// RunRole runs the helper role args[0] names, if it names one, until
// SIGINT or SIGTERM; it reports whether it did and the exit code. Both the
// benchmark command and this package's tests call it first thing, so that
// either binary can serve as the plain tunnel's relay and agent.
func RunRole(args []string, stderr io.Writer) (handled bool, code int) {
	if len(args) == 0 || (args[0] != RolePlainRelay && args[0] != RolePlainAgent) {
		return false, 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, nil))
	var err error
	if args[0] == RolePlainRelay {
		err = runPlainRelay(ctx, log, args[1:])
	} else {
		err = runPlainAgent(ctx, log, args[1:])
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", args[0], err)
		return true, 1
	}
	return true, 0
}

// runPlainRelay serves one agent: the tunnel on --tunnel, and a front
// port whose every connection is joined to a stream to that agent.
func runPlainRelay(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet(RolePlainRelay, flag.ContinueOnError)
	listen := fs.String("tunnel", "127.0.0.1:0", "tunnel listen address")
	certFile := fs.String("cert", "", "certificate (PEM)")
	keyFile := fs.String("key", "", "key (PEM)")
	agent := fs.String("agent", "", "the agent's name")
	tokenHash := fs.String("token-sha256", "", "hex SHA-256 of the agent's token")
	stopPprof, err := parseRole(fs, args, log)
	if err != nil {
		return err
	}
	defer stopPprof()
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	var cred tunnel.AgentCredential
	cred.Name = *agent
	if h, err := hex.DecodeString(*tokenHash); err != nil || len(h) != len(cred.TokenSHA256) || cred.Name == "" {
		return errors.New("--agent and --token-sha256 (64 hex digits) are required")
	} else {
		copy(cred.TokenSHA256[:], h)
	}
	srv, err := tunnel.Listen(ctx, tunnel.ServerConfig{
		Listen:    *listen,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		Agents:    []tunnel.AgentCredential{cred},
		Logger:    log,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("front: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	stopFront := context.AfterFunc(ctx, func() { front.Close() })
	defer stopFront()
	log.Info("plain relay started", "tunnel", srv.Addr(), "front", "http://"+front.Addr().String())
	conns := newConnSet()
	defer conns.closeAll()
	for {
		c, err := front.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("front: accept: %w", err)
		}
		wg.Go(func() {
			defer c.Close()
			st, err := srv.Dial(ctx, cred.Name)
			if err != nil {
				log.Warn("plain relay: dial agent", "err", err)
				return
			}
			join(conns, c, st)
		})
	}
}

// runPlainAgent connects to a plain relay and joins every stream it is
// given to a new connection to --upstream.
func runPlainAgent(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet(RolePlainAgent, flag.ContinueOnError)
	relay := fs.String("relay", "", "relay tunnel address")
	caFile := fs.String("ca", "", "relay CA (PEM)")
	name := fs.String("name", "", "agent name")
	tokenFile := fs.String("token-file", "", "file holding the agent's token")
	transport := fs.String("transport", "quic", "quic or tcp")
	mux := fs.String("mux", "native", "native or yamux")
	upstream := fs.String("upstream", "", "host:port every stream is joined to")
	stopPprof, err := parseRole(fs, args, log)
	if err != nil {
		return err
	}
	defer stopPprof()
	tok, err := os.ReadFile(*tokenFile)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	tlsCfg, err := tunnel.ClientTLS("", *caFile, "")
	if err != nil {
		return err
	}
	cl, err := tunnel.NewClient(tunnel.ClientConfig{
		Name: *name, Address: *relay, Token: strings.TrimSpace(string(tok)), TLSConfig: tlsCfg,
		Transport: *transport, Mux: *mux, Logger: log,
	})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, cancel := context.WithCancel(ctx) // cancelled before wg.Wait: it stops cl.Run
	defer cancel()
	runErr := make(chan error, 1)
	wg.Go(func() { runErr <- cl.Run(runCtx) })
	wctx, wcancel := context.WithTimeout(ctx, startTimeout)
	err = cl.WaitConnected(wctx)
	wcancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	log.Info("plain agent connected", "transport", cl.Transport())
	conns := newConnSet()
	defer conns.closeAll()
	ln := cl.Listener()
	stopLn := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopLn()
	var d net.Dialer
	for {
		st, err := ln.Accept()
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept stream: %w (run: %v)", err, <-runErr)
		}
		wg.Go(func() {
			defer st.Close()
			up, err := d.DialContext(ctx, "tcp", *upstream)
			if err != nil {
				log.Warn("plain agent: dial upstream", "err", err)
				return
			}
			join(conns, st, up)
		})
	}
}

// parseRole parses a role's flags, adding --pprof, and starts the pprof
// server it asks for.
func parseRole(fs *flag.FlagSet, args []string, log *slog.Logger) (stop func(), err error) {
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof here, to compare profiles with mcptun's")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return servePprof(*pprofAddr, log)
}

// servePprof serves net/http/pprof on addr, if set, until stop.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Handler: mux}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	log.Info("pprof listening", "addr", "http://"+ln.Addr().String()+"/debug/pprof/")
	return func() { _ = srv.Close(); <-done }, nil
}

// connSet lets a stopping helper close the connections it is copying.
type connSet struct {
	mu     sync.Mutex
	closed bool
	m      map[io.Closer]struct{}
}

func newConnSet() *connSet { return &connSet{m: map[io.Closer]struct{}{}} }

func (s *connSet) add(cs ...io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	for _, c := range cs {
		s.m[c] = struct{}{}
	}
	return true
}

func (s *connSet) remove(cs ...io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cs {
		delete(s.m, c)
	}
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.m {
		c.Close()
	}
}

var joinBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// join copies both ways between a and b until either side ends, then
// closes both (as frp's io.Join).
func join(set *connSet, a, b net.Conn) {
	if !set.add(a, b) {
		a.Close()
		b.Close()
		return
	}
	defer set.remove(a, b)
	var once sync.Once
	closeBoth := func() { once.Do(func() { a.Close(); b.Close() }) }
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		defer closeBoth()
		buf := joinBufs.Get().(*[]byte)
		defer joinBufs.Put(buf)
		_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *buf)
	}
	wg.Go(func() { pipe(a, b) })
	pipe(b, a)
	wg.Wait()
}

// startPlain deploys a plain relay and a plain agent (transport, mux) in
// front of upstream (host:port) and returns the front's base URL.
func (w *workspace) startPlain(ctx context.Context, self, name, transport, mux, upstream string) (relay, agent *process, front string, err error) {
	tok := randomToken()
	tokFile := w.dir + "/plain-" + name + ".token"
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		return nil, nil, "", fmt.Errorf("plain %s: token: %w", name, err)
	}
	relay, err = startProcessEnv("plain relay "+name, w.logPath("plain-relay-"+name), w.tunnelEnv, self, RolePlainRelay,
		"--cert", w.dir+"/relay.crt", "--key", w.dir+"/relay.key", "--agent", name, "--token-sha256", sha256Hex(tok))
	if err != nil {
		return nil, nil, "", err
	}
	m, err := relay.WaitLine(ctx, plainRelayRe, startTimeout)
	if err != nil {
		_ = relay.Stop()
		return nil, nil, "", fmt.Errorf("plain relay %s: %w", name, err)
	}
	tunnelAddr, front := m[1], m[2]
	agent, err = startProcessEnv("plain agent "+name, w.logPath("plain-agent-"+name), w.tunnelEnv, self, RolePlainAgent,
		"--relay", tunnelAddr, "--ca", w.dir+"/relay.crt", "--name", name, "--token-file", tokFile,
		"--transport", transport, "--mux", mux, "--upstream", upstream)
	if err != nil {
		_ = relay.Stop()
		return nil, nil, "", err
	}
	// The relay registers a session before it welcomes the agent, so once
	// the agent says it is connected, streams to it can be dialled.
	m, err = agent.WaitLine(ctx, plainAgentRe, startTimeout)
	want := agentSpec{Transport: transport, Mux: mux}.wantTransport()
	if err == nil && strings.Trim(m[1], `"`) != want {
		err = fmt.Errorf("connected over %s, want %s", m[1], want)
	}
	if err != nil {
		_ = agent.Stop()
		_ = relay.Stop()
		return nil, nil, "", fmt.Errorf("plain agent %s: %w", name, err)
	}
	return relay, agent, front, nil
}
