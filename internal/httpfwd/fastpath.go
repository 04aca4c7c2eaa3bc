package httpfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	// BodyTimeout cuts a request whose body makes no progress this long
	// (answered 408 body_timeout); WriteTimeout cuts a client that accepts
	// no bytes of its answer this long (the error, passed to CutShort,
	// wraps ErrClientStalled). Zero: no limit. Both apply to forwarded
	// exchanges; a served one (Exchange.Serve) sets its own deadlines.
	BodyTimeout, WriteTimeout time.Duration
	// StallAfter, if > 0, is how long a write of a forwarded answer may be
	// blocked before it takes a place in the exchange's StallBudget (see
	// Exchange.Stalls); with none left the client is cut (the error, passed
	// to CutShort, wraps ErrClientBacklog).
	StallAfter time.Duration
	// BadRequest renders the JSON body answering a malformed head.
	BadRequest func(reason string) []byte
	// ErrorBody, if set, renders the JSON body of another answer the fast
	// path gives itself: reason is a stable code (body_timeout), msg says
	// why.
	ErrorBody func(reason, msg string) []byte
	// Route returns the exchange to forward for a head, or nil to hand
	// the connection, head replayed, to net/http. out is a buffer for the
	// upstream head; Route returns the Exchange that appended to it.
	Route func(head *Head, out []byte) *Exchange
	// RouteConn, if set, is Route told which connection the head came on
	// (a proxy that decides by the client's address); Route is then
	// unused.
	RouteConn func(c net.Conn, head *Head, out []byte) *Exchange
	// Logger, if set, is told of a ServeFunc that panicked.
	Logger *slog.Logger
	// Cut, if set, is told of a client cut for a timeout the fast path
	// keeps itself (reason body_timeout), for a log line.
	Cut func(c net.Conn, reason string, err error)
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
	// Done, if set, is called once the exchange is over: answered, failed
	// or cut. A draining server counts its exchanges in flight with it.
	Done func()
	// Stalls, if set, bounds the answers of Fwd's upstream whose clients
	// read nothing at once (see FastPath.StallAfter).
	Stalls *StallBudget
	// PeekBody, if set, is shown a forwarded request's body when it was
	// read into memory whole (a small one), before it goes upstream; it
	// must not keep it.
	PeekBody func(body []byte)
	// Finished, if set, is told how the exchange ended (for an access
	// log), before Done.
	Finished func(Result)
	// Tap, if set, is shown every byte written to the client for a
	// forwarded exchange (its answer in wire form, head and framing
	// included), after it was written; it must not keep p.
	Tap func(p []byte)
	// Inspect, if set, sees the whole body of a forwarded exchange (Route
	// takes such an exchange only with a body of at most MaxHeldBody)
	// before it goes out, and may answer it instead: an exchange with
	// Serve, which then gets the body that was read. nil forwards it.
	Inspect func(head *Head, body []byte) *Exchange
}

// Result is how an exchange ended.
type Result struct {
	// Status is the answer's HTTP status: the upstream's, or that of the
	// error answer the fast path gave; 0 if none was sent (the client
	// left, the answer was cut before its head).
	Status int
	// BytesIn is the request body's declared length; BytesOut counts the
	// bytes written to the client, head included.
	BytesIn, BytesOut int64
}

var outHeadPool = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}

// ServeConn serves c until it is done (and closed; it returns nil) or until
// Route declines an exchange: then it returns c with what it read replayed,
// for an http.Server, and no longer touches c.
func (p *FastPath) ServeConn(ctx context.Context, c net.Conn) (rest net.Conn) {
	cs := newConnState(ctx, c, p.IdleTimeout, p.HeaderTimeout)
	cs.bodyTimeout, cs.writeTimeout = p.BodyTimeout, p.WriteTimeout
	head := new(Head)
	cs.head = head
	defer func() {
		if rest == nil {
			if cs.linger {
				lingerClose(c)
			}
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
			_ = WriteAnswer(&cs.outw, http.StatusBadRequest,
				"Content-Type: application/json\r\nConnection: close\r\n", p.BadRequest("bad request: "+he.Reason))
			return nil
		default:
			return nil
		}
		if !p.serve(cs, head) {
			cs.clearDeadline() // net/http keeps its own
			cs.clearWriteDeadline()
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
	var x *Exchange
	if p.RouteConn != nil {
		x = p.RouteConn(cs.c, head, (*out)[:0])
	} else {
		x = p.Route(head, (*out)[:0])
	}
	if x == nil {
		return false
	}
	if x.Done != nil {
		defer x.Done()
	}
	if x.Tap != nil {
		cs.tap = x.Tap
		defer func() { cs.tap = nil }()
	}
	if x.Finished != nil {
		before := cs.written
		cs.status = 0
		defer func() {
			x.Finished(Result{Status: cs.status, BytesIn: max(head.ContentLength, 0), BytesOut: cs.written - before})
		}()
	}
	if cap(x.Req.Head) <= 64<<10 {
		*out = x.Req.Head[:0]
	}
	var keep bool
	if x.Serve != nil {
		keep = serveLocal(cs, head, x, p.Logger)
	} else {
		keep = p.forward(cs, head, x)
	}
	if !keep {
		head.Close = true
	}
	return true
}

// forward passes one exchange on; it reports whether c can carry another.
func (p *FastPath) forward(cs *connState, head *Head, x *Exchange) bool {
	n := head.ContentLength
	m, _, _, _ := head.RequestLine()
	if n < 0 && (string(m) == http.MethodPost || string(m) == http.MethodPut || string(m) == http.MethodPatch) {
		n = 0
	}
	x.Req.NoResponseBody = string(m) == http.MethodHead
	release, err := cs.readBody(&x.Req, n)
	if err != nil {
		p.bodyFailed(cs, err)
		return false
	}
	cs.releaseBody = release
	if x.PeekBody != nil && x.Req.Body != nil {
		x.PeekBody(x.Req.Body)
	}
	if x.Inspect != nil && n <= MaxHeldBody {
		if alt := x.Inspect(head, x.Req.Body); alt != nil {
			return serveBody(cs, head, alt, x.Req.Body, p.Logger)
		}
	}
	if cs.shedFn == nil {
		cs.shedFn = cs.shed
	}
	x.Req.OnPark = cs.shedFn
	ctx := cs.beginExchange(x.Req.BodyRead)
	if p.StallAfter > 0 && x.Stalls != nil {
		cs.stall.Watch(x.Stalls, p.StallAfter, cs.cutWrite)
		defer cs.stall.Watch(nil, 0, nil)
	}
	err = x.Fwd.ForwardRaw(ctx, &cs.outw, &x.Req)
	cs.status = x.Req.Status
	gone := cs.endExchange()
	var ue *UpstreamError
	switch {
	case err == nil:
		// An answer that came before the whole body was read (an early
		// 413) leaves the rest of it on c: c cannot carry another.
		cs.linger = !gone && !x.Req.BodyRead()
		return !gone && x.Req.BodyRead()
	case gone:
		return false // nobody is left to answer
	case !errors.As(err, &ue):
		if x.CutShort != nil {
			x.CutShort(err)
		}
		return false
	}
	if errors.Is(err, ErrBodyStalled) {
		// A streamed body stalled on its way: the client's fault, not
		// the upstream's.
		p.bodyFailed(cs, err)
		return false
	}
	status, header, body := x.Failed(err)
	cs.status = status
	werr := WriteAnswer(&cs.outw, status, header, body)
	// With a body left partly unread the connection's state is unknown.
	cs.linger = werr == nil && !x.Req.BodyRead()
	return werr == nil && x.Req.BodyRead()
}

// Bounds of lingerClose: long enough for a client on a fast link to
// take its answer, short enough that a client holding the connection
// open costs little.
const (
	lingerTime  = time.Second
	lingerBytes = 32 << 20
)

// lingerClose prepares the close of a connection whose client may still
// be sending a body its answer made moot. Closing with bytes unread, or
// with more arriving, resets the connection, and a reset can destroy the
// answer in the client's buffers before it reads it. So, as net/http's
// server does: end our side first, then read and drop what comes, for at
// most lingerTime and lingerBytes.
func lingerClose(c net.Conn) {
	for cw := c; ; {
		if w, ok := cw.(interface{ CloseWrite() error }); ok {
			_ = w.CloseWrite()
			break
		}
		nc, ok := cw.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		cw = nc.NetConn()
	}
	_ = c.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, c, lingerBytes)
}

// bodyFailed ends an exchange whose request body could not be read: one
// that stalled is answered 408 (body_timeout) and logged, as far as the
// client still takes an answer; for any other failure (the client left)
// there is nobody to tell.
func (p *FastPath) bodyFailed(cs *connState, err error) {
	if !errors.Is(err, ErrBodyStalled) {
		return
	}
	if p.Cut != nil {
		p.Cut(cs.c, "body_timeout", err)
	}
	msg := fmt.Sprintf("the request body made no progress for %s", cs.bodyTimeout)
	var body []byte
	if p.ErrorBody != nil {
		body = p.ErrorBody("body_timeout", msg)
	} else {
		body = p.BadRequest(msg)
	}
	cs.status = http.StatusRequestTimeout
	_ = WriteAnswer(&cs.outw, http.StatusRequestTimeout, "Content-Type: application/json\r\nConnection: close\r\n", body)
}
