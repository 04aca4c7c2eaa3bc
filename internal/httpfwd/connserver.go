package httpfwd

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
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
type ConnServer struct {
	serve    ServeConnFunc
	hand     *handoffListener
	ctx      context.Context // ends at Shutdown or Close
	stop     context.CancelFunc
	hardStop context.CancelFunc // ends Closing(ctx): the connections are closed
	hup      *hupWatcher        // watches waiting clients' sockets (connState)

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
		hup: hup, conns: make(map[net.Conn]struct{})}
}

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
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return http.ErrServerClosed
			}
			return err
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
