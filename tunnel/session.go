package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
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

// Tuning shared by both ends.
const (
	keepAlivePeriod = 5 * time.Second
	// quicIdleTimeout: with keep-alives every 5 s, a peer silent for 15 s is
	// gone.
	quicIdleTimeout = 15 * time.Second
	// maxIncomingStreams bounds concurrent relay-opened streams per session;
	// quic-go's default of 100 would throttle a busy agent.
	maxIncomingStreams = 10000
	// yamuxWindow sizes the yamux stream window near a WAN
	// bandwidth-delay product: 256 KiB (the default) caps a stream at
	// 256 KiB per RTT, 16 MiB bloats buffers.
	yamuxWindow = 4 << 20
	// yamuxWriteTimeout also bounds the wait for a ping answer, so a dead
	// TCP peer is noticed within keepAlivePeriod + yamuxWriteTimeout.
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
		MaxIdleTimeout:        quicIdleTimeout,
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
	c.EnableKeepAlive = true
	c.KeepAliveInterval = keepAlivePeriod
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
	return s.conn.CloseWithError(0, "")
}

func (s *quicSession) Done() <-chan struct{} { return s.conn.Context().Done() }
func (s *quicSession) RemoteAddr() net.Addr  { return s.conn.RemoteAddr() }
func (s *quicSession) Transport() string     { return TransportQUIC }

// yamuxSession multiplexes over a TLS connection or over one QUIC stream.
type yamuxSession struct {
	mux       *yamux.Session
	transport string
	// quic is the connection under a quic+yamux session: yamux closing its
	// stream leaves the connection up, so Close ends it too.
	quic *quic.Conn
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
	return err
}

func (s *yamuxSession) Done() <-chan struct{} { return s.mux.CloseChan() }
func (s *yamuxSession) RemoteAddr() net.Addr  { return s.mux.RemoteAddr() }
func (s *yamuxSession) Transport() string     { return s.transport }

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
