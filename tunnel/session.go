package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
)

// Session is one authenticated-or-authenticating connection between an agent
// and a relay, whatever the transport.
type Session interface {
	// OpenStream opens a stream to the peer.
	OpenStream(ctx context.Context) (Stream, error)
	// AcceptStream waits for the peer to open a stream.
	AcceptStream(ctx context.Context) (Stream, error)
	// Close ends the session and every stream on it.
	Close() error
	// Done is closed when the session is dead, whoever ended it.
	Done() <-chan struct{}
	RemoteAddr() net.Addr
	// Transport is "quic", "tcp+yamux" or "quic+yamux".
	Transport() string
}

// Transport names, as Session.Transport reports them.
const (
	TransportQUIC      = "quic"
	TransportTCPYamux  = "tcp+yamux"
	TransportQUICYamux = "quic+yamux"
)

// Liveness, shared by both ends. A dead or frozen peer is noticed within
// keepAlivePeriod + idleTimeout (4.5 s): QUIC sends a keep-alive PING once
// nothing has arrived for keepAlivePeriod, and the idle timer restarts at
// that PING, so the worst case is a peer that dies just after its last
// packet. Over yamux the watchdog (yamuxSession.watch) pings after
// keepAlivePeriod of silence and ends the session after idleTimeout. The
// cost is one small packet (and its acknowledgement) per second on an idle
// session, each way at most.
const (
	keepAlivePeriod = 1 * time.Second
	idleTimeout     = 3500 * time.Millisecond
	// heartbeatInterval paces the agent's ping frames on the control
	// stream (see Client.heartbeat): packets large enough that a relay
	// restarted from the same key answers them with a stateless reset, which
	// QUIC's own keep-alive PINGs are too small to draw.
	heartbeatInterval = 1 * time.Second
)

// Tuning shared by both ends.
const (
	// maxIncomingStreams bounds concurrent relay-opened streams per session;
	// quic-go's default of 100 would throttle a busy agent.
	maxIncomingStreams = 10000
	// yamuxWindow sizes the yamux stream window near a WAN
	// bandwidth-delay product: 256 KiB (the default) caps a stream at
	// 256 KiB per RTT, 16 MiB bloats buffers.
	yamuxWindow = 4 << 20
	// yamuxWriteTimeout is yamux's bound on one frame waiting to be written
	// (it fails that write, not the session). Liveness is the watchdog's
	// business, so this may be long enough for a slow link's queue.
	yamuxWriteTimeout = 10 * time.Second

	// QUIC flow control. A stream whose reader stalls (a relay client that
	// reads nothing of its GET stream) keeps its unread bytes, up to its
	// stream window, charged to the connection's window too: with quic-go's
	// defaults (streams up to 6 MiB, the connection from 768 KiB up to
	// 15 MiB) three stalled streams used the whole connection window and
	// every other stream of the agent stopped. So a stream's window is kept
	// small against the connection's, and the connection's is granted in
	// full from the start (auto-tuning grows it only while data is read
	// fast, which stalled streams do not do): 64 stalled streams fit before
	// the connection feels it, and the relay cuts stalled clients after
	// http.write_timeout. 1 MiB per stream is still ~50 MB/s at a 20 ms RTT.
	// The windows are credit, not memory: memory is what is received and
	// not yet read.
	quicStreamWindowInitial = 512 << 10
	quicStreamWindowMax     = 1 << 20
	quicConnWindow          = 64 << 20
)

func quicConfig() *quic.Config {
	return &quic.Config{
		KeepAlivePeriod:       keepAlivePeriod,
		MaxIdleTimeout:        idleTimeout,
		MaxIncomingStreams:    maxIncomingStreams,
		MaxIncomingUniStreams: -1, // the protocol uses none

		InitialStreamReceiveWindow:     quicStreamWindowInitial,
		MaxStreamReceiveWindow:         quicStreamWindowMax,
		InitialConnectionReceiveWindow: quicConnWindow,
		MaxConnectionReceiveWindow:     quicConnWindow,
	}
}

func yamuxConfig(log *slog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	// yamux's own keep-alive fails only when a ping's answer is overdue by
	// ConnectionWriteTimeout, and an answer queued behind data on a busy
	// link can be: the watchdog instead counts any byte from the peer as
	// a sign of life.
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = yamuxWriteTimeout
	c.MaxStreamWindowSize = yamuxWindow
	c.LogOutput = nil
	c.Logger = yamuxLogger{log}
	return c
}

// yamuxLogger sends yamux's own log lines to slog at debug level: the
// session's end is logged by this package with more context.
type yamuxLogger struct{ log *slog.Logger }

func (l yamuxLogger) Print(v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprint(v...)), "component", "yamux")
}
func (l yamuxLogger) Printf(format string, v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "yamux")
}
func (l yamuxLogger) Println(v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintln(v...)), "component", "yamux")
}

// quicSession uses native QUIC streams.
type quicSession struct {
	conn *quic.Conn
	// tr, if set, is a transport only this session uses (Connect's): Close
	// releases it.
	tr io.Closer
}

func (s *quicSession) OpenStream(ctx context.Context) (Stream, error) {
	st, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return newQUICStream(st, s.conn), nil
}

func (s *quicSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.conn.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return newQUICStream(st, s.conn), nil
}

func (s *quicSession) Close() error {
	err := s.conn.CloseWithError(0, "")
	if s.tr != nil {
		_ = s.tr.Close()
	}
	return err
}

func (s *quicSession) Done() <-chan struct{} { return s.conn.Context().Done() }
func (s *quicSession) RemoteAddr() net.Addr  { return s.conn.RemoteAddr() }
func (s *quicSession) Transport() string     { return TransportQUIC }

// yamuxSession multiplexes over a TLS connection or over one QUIC stream.
type yamuxSession struct {
	mux       *yamux.Session
	conn      *activityConn
	transport string
	log       *slog.Logger
	// quic is the connection under a quic+yamux session: yamux closing its
	// stream leaves the connection up, so Close ends it too.
	quic *quic.Conn
	tr   io.Closer // as in quicSession

	wg     sync.WaitGroup // the watchdog and its ping
	silent atomic.Bool    // the watchdog ended the session
	rtt    atomic.Int64   // the last ping's round trip (ns), see stats.go
}

// newYamux starts yamux over conn as the client (the agent) or the server
// (the relay), with the watchdog.
func newYamux(conn net.Conn, client bool, transport string, log *slog.Logger) (*yamuxSession, error) {
	ac := &activityConn{Conn: conn, start: time.Now()}
	var mux *yamux.Session
	var err error
	if client {
		mux, err = yamux.Client(ac, yamuxConfig(log))
	} else {
		mux, err = yamux.Server(ac, yamuxConfig(log))
	}
	if err != nil {
		return nil, err
	}
	s := &yamuxSession{mux: mux, conn: ac, transport: transport, log: log}
	s.wg.Add(1)
	go s.watch() // owned by s: Close waits for it
	return s, nil
}

func (s *yamuxSession) OpenStream(ctx context.Context) (Stream, error) {
	// yamux's OpenStream cannot be cancelled; it blocks only while 256
	// stream opens are unacknowledged, and yamux closes the session when
	// one stays unacknowledged for 75 s.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, err
	}
	return &yamuxStream{Stream: st}, nil
}

func (s *yamuxSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.mux.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, err
	}
	return &yamuxStream{Stream: st}, nil
}

func (s *yamuxSession) Close() error {
	err := s.mux.Close()
	if s.quic != nil {
		_ = s.quic.CloseWithError(0, "")
	}
	if s.tr != nil {
		_ = s.tr.Close()
	}
	s.wg.Wait()
	return err
}

func (s *yamuxSession) Done() <-chan struct{} { return s.mux.CloseChan() }
func (s *yamuxSession) RemoteAddr() net.Addr  { return s.mux.RemoteAddr() }
func (s *yamuxSession) Transport() string     { return s.transport }

// errPeerSilent is why the watchdog ended a session.
var errPeerSilent = fmt.Errorf("tunnel: nothing received from the peer for %v", idleTimeout)

// endCause reports why the session ended, when the transport knows better
// than the stream that saw it.
func (s *yamuxSession) endCause() error {
	if s.silent.Load() {
		return errPeerSilent
	}
	return nil
}

// watch is the session's liveness check: any byte from the peer counts.
// After keepAlivePeriod of silence it pings (the peer's answer is a byte),
// once a second while the silence lasts, and after idleTimeout it ends the
// session. It wakes about once per keepAlivePeriod, busy or not.
func (s *yamuxSession) watch() {
	defer s.wg.Done()
	pinging := make(chan struct{}, 1) // full while a ping is outstanding
	t := time.NewTimer(keepAlivePeriod)
	defer t.Stop()
	for {
		select {
		case <-s.mux.CloseChan():
			return
		case <-t.C:
		}
		silent := s.conn.silentFor()
		if silent >= idleTimeout {
			s.silent.Store(true)
			s.log.Debug("tunnel: peer silent; ending the session", "silent", silent.Round(time.Millisecond), "transport", s.transport)
			_ = s.mux.Close()
			return
		}
		next := keepAlivePeriod - silent
		if silent >= keepAlivePeriod {
			next = min(keepAlivePeriod, idleTimeout-silent)
			select {
			case pinging <- struct{}{}:
				s.wg.Add(1) // s.wg is above zero while watch runs
				go func() {
					defer s.wg.Done()
					// Returns on the answer, yamux's write timeout or the
					// session's end; the answer's bytes are what counts.
					if rtt, err := s.mux.Ping(); err == nil {
						s.rtt.Store(int64(rtt))
					}
					<-pinging
				}()
			default:
				// The previous ping is still waiting for its answer.
			}
		}
		t.Reset(next)
	}
}

// activityConn notes when bytes last arrived from the peer.
type activityConn struct {
	net.Conn
	start time.Time    // carries the monotonic clock reading
	last  atomic.Int64 // nanoseconds after start of the last read with data
	// Bytes read and written, for metrics (see stats.go).
	in, out atomic.Uint64
}

func (c *activityConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.last.Store(int64(time.Since(c.start)))
		c.in.Add(uint64(n))
	}
	return n, err
}

func (c *activityConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(uint64(n))
	return n, err
}

func (c *activityConn) silentFor() time.Duration {
	return time.Since(c.start) - time.Duration(c.last.Load())
}

// isClosedErr reports errors that mean "the session or listener was shut
// down", which need no log line.
func isClosedErr(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled) ||
		errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, quic.ErrServerClosed) {
		return true
	}
	var appErr *quic.ApplicationError
	return errors.As(err, &appErr) && appErr.ErrorCode == 0
}
