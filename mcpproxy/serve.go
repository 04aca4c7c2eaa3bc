package mcpproxy

import (
	"net"
	"net/http"
	"sync"
)

// ConnServer serves a Handler on the connections of a listener (the
// agent's tunnel streams): exchanges for URL servers on the fast path
// (ServeConn), every other connection handed to an http.Server that serves
// the Handler on the listener Handoff returns.
type ConnServer struct {
	h    *Handler
	hand *handoffListener

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{} // on the fast path
	closed bool
	wg     sync.WaitGroup // one per fast conn
}

// NewConnServer returns a ConnServer for h; addr is what its hand-off
// listener reports as its address.
func NewConnServer(h *Handler, addr net.Addr) *ConnServer {
	return &ConnServer{h: h, hand: newHandoffListener(addr), conns: make(map[net.Conn]struct{})}
}

// Handoff returns the listener on which an http.Server serving the same
// Handler receives the connections the fast path passes on.
func (s *ConnServer) Handoff() net.Listener { return s.hand }

// Serve accepts connections from ln until it fails, which it returns;
// Close closes ln.
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
			rest := s.h.ServeConn(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			if rest != nil {
				s.hand.push(rest)
			}
		}()
	}
}

// Close closes the listener, the hand-off listener (connections passed on
// later are closed) and the connections on the fast path, and waits for
// their goroutines. Connections already passed on are the http.Server's to
// close.
func (s *ConnServer) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	_ = s.hand.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	s.wg.Wait()
	return nil
}

// handoffListener gives an http.Server the connections ServeConn passed on.
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
