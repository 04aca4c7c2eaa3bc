package tunnel

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
)

// Stream is one bidirectional tunnel stream. CloseWrite ends the write
// direction (the peer reads io.EOF) and leaves the read direction open;
// Close ends both.
type Stream interface {
	net.Conn
	CloseWrite() error
}

// streamCodeClosed is the QUIC stream error code for "closed before all
// data was exchanged": sent as STOP_SENDING by Close, and as RESET_STREAM
// when Close interrupts a blocked Write.
const streamCodeClosed quic.StreamErrorCode = 1

// quicStream makes a *quic.Stream a Stream. quic-go's Close ends only the
// write side and must not run concurrently with Write; net.Conn promises
// both, so the wrapper serialises them.
type quicStream struct {
	st     *quic.Stream
	conn   *quic.Conn
	wmu    sync.Mutex // held by Write and by the graceful part of Close
	closed atomic.Bool
	// onClose, if set, runs once when Close is first called (the relay
	// counts a session's open streams with it).
	onClose func()
}

var _ Stream = (*quicStream)(nil)

func newQUICStream(st *quic.Stream, conn *quic.Conn) *quicStream {
	return &quicStream{st: st, conn: conn}
}

func (s *quicStream) Read(p []byte) (int, error) {
	n, err := s.st.Read(p)
	if err != nil {
		err = s.mapErr(err)
	}
	return n, err
}

// mapErr reports a stream closed by us as net.ErrClosed. When the whole
// connection ended, it returns only once the connection's context is done
// too (quic-go ends the streams first, an instant before), so a caller
// asking the session at once, as the relay does to choose between "agent
// offline" and "tunnel error", hears the truth.
func (s *quicStream) mapErr(err error) error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	if connEnded(err) {
		<-s.conn.Context().Done()
	}
	return err
}

// connEnded reports the errors quic-go gives streams when their connection
// closes.
func connEnded(err error) bool {
	var (
		idle  *quic.IdleTimeoutError
		reset *quic.StatelessResetError
		app   *quic.ApplicationError
		trans *quic.TransportError
	)
	return errors.As(err, &idle) || errors.As(err, &reset) || errors.As(err, &app) || errors.As(err, &trans)
}

func (s *quicStream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := s.st.Write(p)
	if err != nil {
		err = s.mapErr(err)
	}
	return n, err
}

func (s *quicStream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return net.ErrClosed
	}
	return s.st.Close()
}

func (s *quicStream) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	if s.onClose != nil {
		defer s.onClose()
	}
	s.st.CancelRead(streamCodeClosed)
	if s.wmu.TryLock() {
		// No Write in progress: end the write side with a FIN after the
		// data already written. The error only says the peer reset the
		// stream first, which changes nothing for a closer.
		_ = s.st.Close()
		s.wmu.Unlock()
		return nil
	}
	// A Write is blocked, most likely on flow control. A FIN now would make
	// the truncated data look complete, so reset instead; that also
	// unblocks the Write.
	s.st.CancelWrite(streamCodeClosed)
	return nil
}

// Context is cancelled when the stream can no longer carry our answer: the
// peer stopped reading it (STOP_SENDING, as Close does on the other side),
// reset it, or the connection ended. A server blocked on something else can
// use it to learn, without a reading goroutine, that the client left.
func (s *quicStream) Context() context.Context { return s.st.Context() }

func (s *quicStream) LocalAddr() net.Addr                { return s.conn.LocalAddr() }
func (s *quicStream) RemoteAddr() net.Addr               { return s.conn.RemoteAddr() }
func (s *quicStream) SetDeadline(t time.Time) error      { return s.st.SetDeadline(t) }
func (s *quicStream) SetReadDeadline(t time.Time) error  { return s.st.SetReadDeadline(t) }
func (s *quicStream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }

// yamuxStream makes a *yamux.Stream a Stream. yamux's Close is a half-close
// (it sends FIN and keeps delivering input), so it serves as CloseWrite, and
// Close additionally stops local reads. yamux has no way to tell the peer to
// stop sending: a peer that keeps writing to a closed stream blocks once
// the window is full, until it closes too or yamux's StreamCloseTimeout
// resets the stream.
type yamuxStream struct {
	*yamux.Stream
	closed  atomic.Bool
	onClose func() // as in quicStream
}

var _ Stream = (*yamuxStream)(nil)

func (s *yamuxStream) Read(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := s.Stream.Read(p)
	return n, s.mapErr(err)
}

func (s *yamuxStream) Write(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := s.Stream.Write(p)
	return n, s.mapErr(err)
}

// mapErr reports a stream closed by us as net.ErrClosed and a yamux
// timeout as os.ErrDeadlineExceeded, so callers test for both the usual way.
func (s *yamuxStream) mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case s.closed.Load():
		return net.ErrClosed
	case errors.Is(err, yamux.ErrTimeout):
		return os.ErrDeadlineExceeded
	}
	return err
}

func (s *yamuxStream) CloseWrite() error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	return s.Stream.Close()
}

func (s *yamuxStream) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	if s.onClose != nil {
		defer s.onClose()
	}
	// A deadline in the past wakes a Read blocked in another goroutine;
	// yamux's Close alone would leave it waiting for more input.
	_ = s.Stream.SetReadDeadline(time.Unix(1, 0))
	return s.Stream.Close()
}

// setOnClose sets st's close hook; st is fresh from this package.
func setOnClose(st Stream, f func()) {
	switch st := st.(type) {
	case *quicStream:
		st.onClose = f
	case *yamuxStream:
		st.onClose = f
	}
}
