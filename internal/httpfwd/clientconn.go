package httpfwd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// connState is the fast path's state for one client connection. It lives
// as long as the connection, so that an exchange allocates nothing for its
// timeouts, its cancellation or the watch on the client: one context, one
// timer and one shutdown hook per connection, reused by every exchange.
// (Made per exchange, they were a good part of what the fast path spent
// beyond a byte-copying tunnel, and every exchange of every connection
// took the ConnServer context's lock to register them.)
type connState struct {
	c net.Conn
	// linger: the last answer left part of its request body unread (an
	// early 413), so the connection is closed by lingerClose.
	linger              bool
	idle, headerTimeout time.Duration
	// fresh: no head was read yet. A new connection waits for its first
	// head at most headerTimeout, as net/http's server does: a client that
	// connects and says nothing holds its descriptor no longer than that.
	fresh bool

	// bodyTimeout cuts a request body that makes no progress this long
	// (read through body); writeTimeout cuts a client that accepts no
	// bytes of its answer this long (written through out, which sets
	// the write deadline before each write; wdeadline says one is set).
	// Zero: no limit.
	bodyTimeout, writeTimeout time.Duration
	body                      progressBody
	outw                      clientWriter
	wdeadline                 bool
	// written counts the bytes written to c; status is the answer status
	// of the exchange in progress (for Exchange.Finished).
	written int64
	status  int
	tap     func([]byte) // Exchange.Tap of the exchange in progress
	// stall watches the writes of a forwarded answer (see StallBudget);
	// cutWrite, made once, is what it calls to cut one.
	stall    StallWatch
	cutWrite func()

	// br reads c. It goes back to its pool while an exchange waits on the
	// upstream with nothing buffered (a GET stream, most of its life):
	// then a watch that read a byte leaves it in pre, which br reads
	// first once taken again.
	br     *bufio.Reader
	pre    prefixReader
	parked bool

	// ctx is each exchange's: it ends when the ConnServer closes its
	// connections (Closing) or when the client left during an exchange —
	// either way the connection is done. A tunnel stream with a context of
	// its own (QUIC) gives that instead: it sees the client leave by
	// itself, and cancel is nil.
	ctx    context.Context
	cancel context.CancelFunc
	unhook func() bool // removes the shutdown hook

	// deadline says a read deadline may be set on c. Only the serving
	// goroutine sets one; it is cleared lazily, before c is read again
	// other than for a head, so an exchange whose head and body arrived
	// whole costs one SetReadDeadline.
	deadline bool

	// What the exchange in progress holds for its request: the head
	// read (the connection's, reused), the upstream head's buffer and the
	// body's release. An exchange that parks (see RawRequest.OnPark) gives
	// them back early: shedFn, made once, is cs.shed.
	head        *Head
	out         *[]byte
	releaseBody func()
	shedFn      func()

	mu        sync.Mutex
	waiting   bool // waiting for a head: a shutdown wakes it
	shutdown  bool
	exchange  bool        // an exchange is being forwarded
	bodyRead  func() bool // of that exchange
	timer     *time.Timer // starts the watch of an exchange that lasts
	watchDone chan struct{}

	// The answer writer of exchanges served on the connection (serve.go)
	// and its header map, reused.
	rw     responseWriter
	header http.Header

	// The ConnServer's hupWatcher, which watches c's socket in place of
	// a goroutine of its own where it can (rc set), registered as hupID
	// while it does.
	hup     *hupWatcher
	rc      syscall.RawConn
	rcTried bool
	hupID   int32
}

// aLongTimeAgo is a deadline in the past: it wakes a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

func newConnState(sctx context.Context, c net.Conn, idle, headerTimeout time.Duration) *connState {
	cs := &connState{c: c, idle: idle, headerTimeout: headerTimeout, fresh: true, pre: prefixReader{r: c}}
	cs.body.cs, cs.outw.cs = cs, cs
	cs.cutWrite = func() { _ = cs.c.SetWriteDeadline(aLongTimeAgo) }
	cs.br = readerPool.Get().(*bufio.Reader)
	cs.br.Reset(c)
	if sc, ok := c.(interface{ Context() context.Context }); ok {
		cs.ctx = sc.Context()
	} else {
		cs.ctx, cs.cancel = context.WithCancel(Closing(sctx))
	}
	cs.unhook = context.AfterFunc(sctx, cs.shuttingDown)
	if cs.cancel != nil {
		cs.hup = hupWatcherOf(sctx)
	}
	return cs
}

// rawConnOf returns the socket under c (a TLS connection's too), or nil.
func rawConnOf(c net.Conn) syscall.RawConn {
	// Unwrap: a ConnServer's counted connection, a TLS connection, or both.
	for range 4 {
		if sc, ok := c.(syscall.Conn); ok {
			rc, err := sc.SyscallConn()
			if err != nil {
				return nil
			}
			return rc
		}
		nc, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = nc.NetConn()
	}
	return nil
}

// shuttingDown wakes the connection if it waits for a head, and only then:
// one still reading a request body must not be cut.
func (cs *connState) shuttingDown() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.shutdown = true
	if cs.waiting {
		_ = cs.c.SetReadDeadline(aLongTimeAgo)
	}
}

// releaseReader gives br back to its pool.
func (cs *connState) releaseReader() {
	if cs.br != nil {
		cs.br.Reset(nil)
		readerPool.Put(cs.br)
		cs.br = nil
	}
}

// parkReader gives br back while nothing is buffered; unparkReader takes
// one again, reading what a watch may have read first.
func (cs *connState) parkReader() bool {
	if cs.parked {
		return true
	}
	if cs.br.Buffered() > 0 {
		return false
	}
	cs.releaseReader()
	cs.parked = true
	return true
}

func (cs *connState) unparkReader() {
	if !cs.parked {
		return
	}
	cs.parked = false
	cs.br = readerPool.Get().(*bufio.Reader)
	cs.br.Reset(&cs.pre)
}

// close releases what the state holds (not c, nor br).
func (cs *connState) close() {
	cs.unhook()
	cs.stall.Stop()
	cs.mu.Lock()
	if cs.timer != nil {
		cs.timer.Stop()
	}
	cs.mu.Unlock()
	if cs.cancel != nil {
		cs.cancel()
	}
}

// waitHead reads the next request head on the connection between
// exchanges: it waits at most idle for the head to begin and then at most
// headerTimeout for the rest of it (a client dribbling a head byte by byte
// holds the connection no longer than that). It returns an error, having
// answered nothing, when the connection is done: closed by the peer, idle
// too long, or the ConnServer shutting down (context.Canceled).
func (cs *connState) waitHead(h *Head) error {
	wait := cs.idle
	if cs.fresh {
		cs.fresh = false
		wait = min(wait, cs.headerTimeout)
	}
	if cs.br.Buffered() == 0 {
		_ = cs.c.SetReadDeadline(time.Now().Add(wait))
		cs.deadline = true
		cs.mu.Lock()
		shut := cs.shutdown
		cs.waiting = !shut
		cs.mu.Unlock()
		if shut {
			return context.Canceled
		}
		_, err := cs.br.Peek(1)
		cs.mu.Lock()
		cs.waiting = false
		shut = cs.shutdown
		cs.mu.Unlock()
		if shut {
			return context.Canceled
		}
		if err != nil {
			return err
		}
	} else if cs.shuttingDownNow() {
		return context.Canceled
	}
	if !headBuffered(cs.br) {
		_ = cs.c.SetReadDeadline(time.Now().Add(cs.headerTimeout))
		cs.deadline = true
	}
	return ReadHead(cs.br, h)
}

func (cs *connState) shuttingDownNow() bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.shutdown
}

// headBuffered reports whether br holds a whole head, so that ReadHead
// cannot block: an empty line after the first line with content (the
// empty lines ReadHead skips before a request are all CRs and LFs).
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	b = bytes.TrimLeft(b, "\r\n")
	return bytes.Contains(b, []byte("\n\n")) || bytes.Contains(b, []byte("\n\r\n"))
}

// clearDeadline lifts the head's read deadline before c is read for
// something else (a body, or a hand-off to net/http).
func (cs *connState) clearDeadline() {
	if cs.deadline {
		_ = cs.c.SetReadDeadline(time.Time{})
		cs.deadline = false
	}
}

// readBody reads a request body of n bytes into req (see
// RawRequest.ReadBody), first lifting the head's deadline if the body is
// not all buffered already.
func (cs *connState) readBody(req *RawRequest, n int64) (release func(), err error) {
	if n <= int64(cs.br.Buffered()) {
		return req.ReadBody(cs.br, n)
	}
	cs.clearDeadline()
	if cs.bodyTimeout <= 0 {
		return req.ReadBody(cs.br, n)
	}
	return req.ReadBody(&cs.body, n)
}

// ErrBodyStalled is the error (wrapped) of a request body that made no
// progress for the body timeout.
var ErrBodyStalled = errors.New("the request body made no progress within the body timeout")

// ErrClientStalled is the error (wrapped) of an answer the client accepted
// no bytes of for the write timeout.
var ErrClientStalled = errors.New("the client accepted no bytes of its answer within the write timeout")

// progressBody reads a request body from the connection, giving each read
// that must wait for the client bodyTimeout to bring something.
type progressBody struct{ cs *connState }

func (r *progressBody) Read(p []byte) (int, error) {
	cs := r.cs
	if cs.br.Buffered() == 0 {
		_ = cs.c.SetReadDeadline(time.Now().Add(cs.bodyTimeout))
		cs.deadline = true
	}
	n, err := cs.br.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w (%s): %w", ErrBodyStalled, cs.bodyTimeout, err)
	}
	return n, err
}

// clientWriter writes an answer to the connection; with a write timeout,
// each write must get some bytes accepted within it.
type clientWriter struct{ cs *connState }

func (w *clientWriter) Write(p []byte) (int, error) {
	cs := w.cs
	if cs.writeTimeout > 0 {
		// A deadline per write, not per answer: a GET stream lasts for
		// hours and is fine as long as its client takes what comes.
		_ = cs.c.SetWriteDeadline(time.Now().Add(cs.writeTimeout))
		cs.wdeadline = true
	}
	cs.stall.Begin()
	n, err := cs.c.Write(p)
	cs.written += int64(n)
	if cs.tap != nil && n > 0 {
		cs.tap(p[:n])
	}
	cut := cs.stall.End()
	switch {
	case err == nil:
	case cut:
		err = fmt.Errorf("%w: %w", ErrClientBacklog, err)
	case cs.writeTimeout > 0 && errors.Is(err, os.ErrDeadlineExceeded):
		err = fmt.Errorf("%w (%s): %w", ErrClientStalled, cs.writeTimeout, err)
	}
	return n, err
}

// clearWriteDeadline lifts the write deadline before c goes to net/http.
func (cs *connState) clearWriteDeadline() {
	if cs.wdeadline {
		_ = cs.c.SetWriteDeadline(time.Time{})
		cs.wdeadline = false
	}
}

// releaseRequest gives back what the exchange holds for its request (the
// upstream head's buffer, the body); it may be called more than once.
func (cs *connState) releaseRequest() {
	if cs.releaseBody != nil {
		cs.releaseBody()
		cs.releaseBody = nil
	}
	if cs.out != nil {
		outHeadPool.Put(cs.out)
		cs.out = nil
	}
}

// shed gives back the memory of the exchange's request once it parked:
// what releaseRequest does, and the head's buffers, which the next head
// gets anew. A connection holding a GET stream keeps none of it.
func (cs *connState) shed() {
	cs.releaseRequest()
	*cs.head = Head{Close: cs.head.Close}
}

// watchAfter is how long an exchange runs before the client's connection
// is watched for the client leaving.
const watchAfter = 50 * time.Millisecond

// beginExchange returns the context of an exchange, which ends when the
// client leaves during it (its input ends). Where c offers a context of its
// own (tunnel QUIC streams) that is used. Otherwise c is watched — by the
// hupWatcher for a socket on Linux, else by a goroutine reading c, as
// net/http's server does around every handler — but only once the exchange
// has lasted longer than watchAfter: most MCP exchanges end sooner and
// never pay for it. bodyRead says whether the request body has been read
// whole; until it has, the watch waits (it must not read c while the body
// is). endExchange must follow.
func (cs *connState) beginExchange(bodyRead func() bool) context.Context {
	if cs.cancel == nil {
		// Nobody reads c until the exchange ends.
		if bodyRead == nil || bodyRead() {
			cs.parkReader()
		}
		return cs.ctx
	}
	cs.mu.Lock()
	cs.exchange, cs.bodyRead = true, bodyRead
	if cs.timer == nil {
		cs.timer = time.AfterFunc(watchAfter, cs.startWatch)
	} else {
		cs.timer.Reset(watchAfter)
	}
	cs.mu.Unlock()
	return cs.ctx
}

// startWatch starts the watch of a lasting exchange. A timer of an earlier
// exchange that fires late finds the next one and watches it early: no
// harm, the watch keeps to the same rules. The next one's own timer then
// finds it watched already (by the hupWatcher or by a goroutine) and
// leaves it be: its reader is parked, and a second registration would
// watch one socket twice.
func (cs *connState) startWatch() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !cs.exchange || cs.watchDone != nil || cs.hupID != 0 {
		return
	}
	if cs.bodyRead != nil && !cs.bodyRead() {
		cs.timer.Reset(watchAfter)
		return
	}
	if !cs.parkReader() {
		// A pipelined request is already here: the client has not left,
		// and reading on would take its bytes.
		return
	}
	if cs.hup != nil {
		if !cs.rcTried {
			cs.rc, cs.rcTried = rawConnOf(cs.c), true
		}
		if cs.rc != nil {
			if id, ok := cs.hup.add(cs, cs.rc); ok {
				cs.hupID = id
				return
			}
		}
	}
	cs.watchLocked()
}

// hangUp is the hupWatcher's news that the socket of cs, registered as id,
// has something to read (a byte or the client's end): the portable watch
// takes over, unless the exchange ended first.
func (cs *connState) hangUp(id int32) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.hupID != id {
		return // endExchange unregisters it
	}
	cs.hupID = 0
	cs.hup.remove(id, cs.rc)
	cs.watchLocked()
}

// watchLocked starts the goroutine that watches c; cs.mu is held.
func (cs *connState) watchLocked() {
	// Under mu, so that endExchange's wake-up comes after it.
	_ = cs.c.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	cs.watchDone = done
	go func() {
		defer close(done)
		// A byte arriving is a pipelined request: it is kept for br.
		err := cs.pre.waitByte()
		switch {
		case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		case cs.pre.has:
			cs.pre.err = err // for br, after the byte
		default:
			cs.cancel()
		}
	}()
}

// endExchange ends the watch and reports whether the client left (or the
// ConnServer closed the connection).
func (cs *connState) endExchange() (left bool) {
	if cs.cancel == nil {
		cs.unparkReader()
		return cs.ctx.Err() != nil
	}
	cs.mu.Lock()
	cs.exchange, cs.bodyRead = false, nil
	done := cs.watchDone
	cs.watchDone = nil
	cs.timer.Stop()
	if cs.hupID != 0 {
		cs.hup.remove(cs.hupID, cs.rc)
		cs.hupID = 0
	}
	cs.mu.Unlock()
	if done != nil {
		_ = cs.c.SetReadDeadline(aLongTimeAgo)
		<-done
		_ = cs.c.SetReadDeadline(time.Time{})
		cs.deadline = false
	}
	cs.unparkReader()
	return cs.ctx.Err() != nil
}
