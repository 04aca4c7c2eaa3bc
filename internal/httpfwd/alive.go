package httpfwd

import (
	"context"
	"errors"
	"net"
	"os"
	"time"
)

// probeKind is how alive tells whether an idle pooled connection is still
// good, chosen once per connection by probeOf.
type probeKind uint8

const (
	// probeSocket peeks at the socket without blocking (TCP, TLS over TCP).
	probeSocket probeKind = iota + 1
	// probeContext asks the connection's context, which ends once the
	// peer stopped reading or reset it (QUIC tunnel streams).
	probeContext
	// probeDeadline reads with a deadline in the past: a stream that
	// returns what it has (or its end) before it looks at the deadline
	// (yamux tunnel streams, net.Pipe).
	probeDeadline
)

func probeOf(c net.Conn) (probeKind, *socketPeek) {
	if _, ok := c.(interface{ Context() context.Context }); ok {
		return probeContext, nil
	}
	if canPeek {
		if rc := rawConnOf(c); rc != nil {
			return probeSocket, newSocketPeek(rc)
		}
	}
	return probeDeadline, nil
}

// alive reports whether an idle pooled connection may carry a request:
// the peer has not closed or reset it, and has sent nothing (an upstream
// says nothing between exchanges; bytes there are a close_notify, or an
// answer nobody asked for). A connection that fails this was going to
// fail the request, and a POST that fails after it went out is not sent
// again: that is why it is checked before, not after.
func (c *conn) alive() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	switch c.probe {
	case probeSocket:
		return c.peek.idle()
	case probeContext:
		return c.Conn.(interface{ Context() context.Context }).Context().Err() == nil
	case probeDeadline:
		if err := c.Conn.SetReadDeadline(aLongTimeAgo); err != nil {
			return false
		}
		var one [1]byte
		n, err := c.Conn.Read(one[:])
		var ne net.Error
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) && !(errors.As(err, &ne) && ne.Timeout()) {
			return false
		}
		return c.Conn.SetReadDeadline(time.Time{}) == nil
	}
	return true
}
