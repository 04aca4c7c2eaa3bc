package httpfwd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcptun/mcptun/internal/logging"
)

// ServeConnFunc serves HTTP/1.1 exchanges on c until it is done (it closes
// c and returns nil) or until an exchange needs a full http.Server: then it
// returns a connection that replays what it had read (see Replay), for the
// server on ConnServer.Handoff. ctx ends when the ConnServer shuts down: a
// ServeConnFunc stops between exchanges then (see WaitHead).
type ServeConnFunc func(ctx context.Context, c net.Conn) (rest net.Conn)

// ConnServer runs a fast path in front of an http.Server: every accepted
// connection goes to a ServeConnFunc, which answers the exchanges it knows
// on the connection itself and hands the connection over for anything else.
//
// Accept errors (out of descriptors, most likely) never stop it: it backs
// off as net/http's server does (5 ms doubling to 1 s) and goes on, while
// the connections it has end by their own timeouts. With MaxConns set, a
// connection over the cap is answered Busy and closed.
type ConnServer struct {
	// MaxConns, if > 0, caps the connections open at once, whether on the
	// fast path or handed over; set it before Serve. (Counting wraps each
	// connection, hiding methods beyond net.Conn's but NetConn: for TCP
	// listeners, not tunnel streams.)
	MaxConns int
	// Busy is the whole answer (status line to body) a connection over
	// MaxConns gets, on a plain TCP connection (a TLS one is closed: its
	// handshake would be the price of the refusal).
	Busy []byte
	// Logger, if set, is told of accept errors and, at most once a
	// minute, of refused connections.
	Logger *slog.Logger

	stats     ConnStats
	open      atomic.Int64  // connections accepted and not yet closed (with MaxConns)
	refusing  chan struct{} // bounds the goroutines answering Busy
	refusals  logging.Every // the "refusing" log line
	acceptErr logging.Every // the "accept failed" log line
	serve     ServeConnFunc
	hand      *handoffListener
	ctx       context.Context // ends at Shutdown or Close
	stop      context.CancelFunc
	hardStop  context.CancelFunc // ends Closing(ctx): the connections are closed
	hup       *hupWatcher        // watches waiting clients' sockets (connState)

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{} // on the fast path
	closed bool
	wg     sync.WaitGroup // one per fast conn
}

// NewConnServer returns a ConnServer; addr is what its hand-off listener
// reports as its address.
func NewConnServer(serve ServeConnFunc, addr net.Addr) *ConnServer {
	hard, hardStop := context.WithCancel(context.Background())
	hup := newHupWatcher()
	ctx := context.WithValue(context.WithValue(context.Background(), closingKey{}, hard), hupKey{}, hup)
	ctx, stop := context.WithCancel(ctx)
	return &ConnServer{serve: serve, hand: newHandoffListener(addr), ctx: ctx, stop: stop, hardStop: hardStop,
		hup: hup, conns: make(map[net.Conn]struct{}), refusing: make(chan struct{}, maxRefusing)}
}

// ConnStats counts what a ConnServer refused or met, for metrics.
type ConnStats struct {
	// Refused counts connections closed at accept for MaxConns.
	Refused atomic.Uint64
	// AcceptErrors counts failed accepts (each followed by a back-off).
	AcceptErrors atomic.Uint64
}

// Stats returns the server's counters.
func (s *ConnServer) Stats() *ConnStats { return &s.stats }

// Open reports the connections open now (counted only with MaxConns).
func (s *ConnServer) Open() int64 { return s.open.Load() }

// Accept back-off, as net/http's server does it.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// maxRefusing bounds the connections being answered Busy at once; beyond
// it they are closed without an answer.
const maxRefusing = 64

// busyLinger bounds the time a refused connection gets to take its answer.
const busyLinger = time.Second

type closingKey struct{}

type hupKey struct{}

// hupWatcherOf returns the ConnServer's watcher a ServeConnFunc's ctx
// carries, or nil.
func hupWatcherOf(ctx context.Context) *hupWatcher {
	w, _ := ctx.Value(hupKey{}).(*hupWatcher)
	return w
}

// Closing returns the context, carried by a ServeConnFunc's ctx, that ends
// when the ConnServer closes its connections (Close, or Shutdown out of
// time): exchanges in progress must end then, even those blocked on the
// upstream with nobody watching the client.
func Closing(ctx context.Context) context.Context {
	if c, ok := ctx.Value(closingKey{}).(context.Context); ok {
		return c
	}
	return context.Background()
}

// Handoff returns the listener on which an http.Server receives the
// connections the fast path passes on.
func (s *ConnServer) Handoff() net.Listener { return s.hand }

// Serve accepts connections from ln until it fails, which it returns;
// Shutdown and Close close ln.
func (s *ConnServer) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return http.ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// A listener that stopped here left the process up and
			// serving nothing (EMFILE under a descriptor flood); the
			// connections held end by their timeouts, so wait and retry.
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			s.stats.AcceptErrors.Add(1)
			// Once a minute: a descriptor flood fails every accept for
			// as long as it lasts; AcceptErrors counts them all.
			if s.Logger != nil && s.acceptErr.Allow(time.Minute) {
				s.Logger.Warn("accept failed; retrying", "err", err, "retry_in", delay, "accept_errors_total", s.stats.AcceptErrors.Load())
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return http.ErrServerClosed
			}
			continue
		}
		delay = 0
		if s.MaxConns > 0 {
			if s.open.Add(1) > int64(s.MaxConns) {
				s.open.Add(-1)
				s.refuse(c)
				continue
			}
			c = &countedConn{Conn: c, open: &s.open}
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return http.ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			rest := s.serve(s.ctx, c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			if rest != nil {
				s.hand.push(rest)
			}
		}()
	}
}

// refuse turns away a connection over MaxConns: answered Busy by a
// goroutine of its own (a few at a time; the client may have sent its
// request, and closing on unread bytes would reset the connection before
// it read the answer), or closed at once.
func (s *ConnServer) refuse(c net.Conn) {
	s.stats.Refused.Add(1)
	if s.Logger != nil && s.refusals.Allow(time.Minute) {
		s.Logger.Warn("too many client connections; refusing new ones", "max_connections", s.MaxConns,
			"refused_total", s.stats.Refused.Load(), "remote", c.RemoteAddr())
	}
	if _, isTLS := c.(*tls.Conn); isTLS || len(s.Busy) == 0 {
		_ = c.Close()
		return
	}
	select {
	case s.refusing <- struct{}{}:
	default:
		_ = c.Close()
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.refusing
		_ = c.Close()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() { <-s.refusing }()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(busyLinger))
		if _, err := c.Write(s.Busy); err != nil {
			return
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		// Read what the client sent until it closes (or busyLinger).
		var buf [512]byte
		for {
			if _, err := c.Read(buf[:]); err != nil {
				return
			}
		}
	}()
}

// countedConn counts itself out of the open connections once closed.
type countedConn struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}

// NetConn returns the connection counted, as tls.Conn does.
func (c *countedConn) NetConn() net.Conn { return c.Conn }

// Shutdown stops accepting, ends connections idle between exchanges at
// once and lets the others finish their exchange until ctx ends; then it
// closes them. Connections already handed over are the http.Server's.
func (s *ConnServer) Shutdown(ctx context.Context) error {
	s.begin() // wakes ServeConnFuncs waiting for a next head (WaitHead)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.hup.stop()
		return nil
	case <-ctx.Done():
		s.closeConns()
		<-done
		s.hup.stop()
		return ctx.Err()
	}
}

// Close closes the listener, the hand-off listener (connections passed on
// later are closed) and the connections on the fast path, and waits for
// their goroutines.
func (s *ConnServer) Close() error {
	s.begin()
	s.closeConns()
	s.wg.Wait()
	s.hup.stop()
	return nil
}

func (s *ConnServer) begin() {
	s.stop()
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	_ = s.hand.Close()
}

func (s *ConnServer) snapshot() []net.Conn {
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

func (s *ConnServer) closeConns() {
	s.hardStop()
	s.mu.Lock()
	conns := s.snapshot()
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// Replay returns c with the head already read (h, whose blank line was
// consumed) and whatever br holds put back in front of its input.
func Replay(c net.Conn, h *Head, br *bufio.Reader) net.Conn {
	read := make([]byte, 0, len(h.Raw)+2)
	read = append(append(read, h.Raw...), "\r\n"...)
	return &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(read), br)}
}

type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// handoffListener gives an http.Server the connections the fast path
// passed on.
type handoffListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoffListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }
