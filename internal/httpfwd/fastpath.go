package httpfwd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// FastPath is the serving loop of a pass-through proxy's fast path (the
// relay's client side, the agent's tunnel side): read each request head in
// wire form, let Route decide, forward the exchange with ForwardRaw or
// answer it with a ServeFunc, and hand the connection to net/http for
// whatever Route does not take. Its
// ServeConn is a ServeConnFunc.
type FastPath struct {
	// IdleTimeout ends a connection idle between exchanges; HeaderTimeout
	// bounds reading a head once it began (see WaitHead).
	IdleTimeout, HeaderTimeout time.Duration
	// BadRequest renders the JSON body answering a malformed head.
	BadRequest func(reason string) []byte
	// Route returns the exchange to forward for a head, or nil to hand
	// the connection, head replayed, to net/http. out is a buffer for the
	// upstream head; Route returns the Exchange that appended to it.
	Route func(head *Head, out []byte) *Exchange
	// Logger, if set, is told of a ServeFunc that panicked.
	Logger *slog.Logger
}

// Exchange is one exchange Route took: forwarded by Fwd, or answered by
// Serve.
type Exchange struct {
	Fwd *Forwarder
	// Serve, if set, answers the exchange itself (see serve.go); Fwd,
	// Failed and CutShort are then unused. Route takes such an exchange
	// only with a body of at most MaxHeldBody, which is read whole first.
	Serve ServeFunc
	Req   RawRequest // Head set by Route; the body is read by ServeConn
	// Failed answers an exchange whose upstream failed before answering:
	// status, header lines (each ending in CRLF) and body. It may log.
	Failed func(err error) (status int, header string, body []byte)
	// CutShort, if set, is told of an answer cut short after it began.
	CutShort func(err error)
}

var outHeadPool = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}

// ServeConn serves c until it is done (and closed; it returns nil) or until
// Route declines an exchange: then it returns c with what it read replayed,
// for an http.Server, and no longer touches c.
func (p *FastPath) ServeConn(ctx context.Context, c net.Conn) (rest net.Conn) {
	cs := newConnState(ctx, c, p.IdleTimeout, p.HeaderTimeout)
	head := new(Head)
	cs.head = head
	defer func() {
		if rest == nil {
			_ = c.Close()
			cs.releaseReader()
		}
		cs.close()
	}()
	var he *HeadError
	for {
		err := cs.waitHead(head)
		switch {
		case err == nil:
		case errors.As(err, &he):
			// As net/http's server would: answer and end the connection.
			_ = WriteAnswer(c, http.StatusBadRequest,
				"Content-Type: application/json\r\nConnection: close\r\n", p.BadRequest("bad request: "+he.Reason))
			return nil
		default:
			return nil
		}
		if !p.serve(cs, head) {
			cs.clearDeadline() // net/http keeps its own
			return Replay(c, head, cs.br)
		}
		if head.Close {
			return nil
		}
		if cap(head.Raw) > 64<<10 {
			head = new(Head) // do not keep a rare huge head's buffer
			cs.head = head
		}
	}
}

// serve routes and forwards (or answers) one exchange. It reports false if Route
// declined; a connection that cannot carry another exchange is marked by
// head.Close.
func (p *FastPath) serve(cs *connState, head *Head) bool {
	// Pooled, not kept by the connection: an idle one holds no more than
	// its state.
	out := outHeadPool.Get().(*[]byte)
	cs.out = out
	defer cs.releaseRequest()
	x := p.Route(head, (*out)[:0])
	if x == nil {
		return false
	}
	if cap(x.Req.Head) <= 64<<10 {
		*out = x.Req.Head[:0]
	}
	var keep bool
	if x.Serve != nil {
		keep = serveLocal(cs, head, x, p.Logger)
	} else {
		keep = forward(cs, head, x)
	}
	if !keep {
		head.Close = true
	}
	return true
}

// forward passes one exchange on; it reports whether c can carry another.
func forward(cs *connState, head *Head, x *Exchange) bool {
	n := head.ContentLength
	m, _, _, _ := head.RequestLine()
	if n < 0 && (string(m) == http.MethodPost || string(m) == http.MethodPut || string(m) == http.MethodPatch) {
		n = 0
	}
	x.Req.NoResponseBody = string(m) == http.MethodHead
	release, err := cs.readBody(&x.Req, n)
	if err != nil {
		return false
	}
	cs.releaseBody = release
	if cs.shedFn == nil {
		cs.shedFn = cs.shed
	}
	x.Req.OnPark = cs.shedFn
	ctx := cs.beginExchange(x.Req.BodyRead)
	err = x.Fwd.ForwardRaw(ctx, cs.c, &x.Req)
	gone := cs.endExchange()
	var ue *UpstreamError
	switch {
	case err == nil:
		// An answer that came before the whole body was read (an early
		// 413) leaves the rest of it on c: c cannot carry another.
		return !gone && x.Req.BodyRead()
	case gone:
		return false // nobody is left to answer
	case !errors.As(err, &ue):
		if x.CutShort != nil {
			x.CutShort(err)
		}
		return false
	}
	status, header, body := x.Failed(err)
	werr := WriteAnswer(cs.c, status, header, body)
	// With a body left partly unread the connection's state is unknown.
	return werr == nil && x.Req.BodyRead()
}
