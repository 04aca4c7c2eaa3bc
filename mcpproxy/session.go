//go:build unix

package mcpproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Reasons a session ends, as seen by clients with requests in flight.
var (
	errDeleted  = errors.New("session deleted by the client")
	errIdle     = errors.New("session idle timeout")
	errShutdown = errors.New("agent shutting down")
	errInitFail = errors.New("initialize failed")
	errReplaced = errors.New("its client reached its session limit and this was its longest-idle session")
)

// session is one MCP session of a stdio server: one child process, the
// requests in flight to it, and the SSE streams and replay buffer of
// messages from it.
type session struct {
	id  string
	srv *stdioServer
	// owner is the client that initialized the session (ClientHeader):
	// to anyone else it does not exist.
	owner string
	log   *slog.Logger
	proc  *process
	// shared marks the one child of the stateless (2026-07-28) era, serving
	// every client of the server at once: client ids may collide, and a
	// message of the child that names no request belongs to no one client.
	shared bool
	done   chan struct{} // closed when the session ends
	idle   *time.Timer
	start  time.Time

	stdinMu sync.Mutex // one message at a time on stdin

	mu         sync.Mutex
	ended      bool
	active     int              // HTTP requests in progress (streams included)
	lastUsed   time.Time        // last time active dropped to zero or rose from it
	nextID     int64            // request ids we give the child
	pending    map[string]*call // by the id the child sees
	cancelled  map[string]bool  // ids of calls we cancelled (answers expected, dropped)
	byClientID map[string]*call // by the id the client sent
	tokens     map[string]*call // by the progress token the child sees
	streams    map[int64]*stream
	standalone *stream // stream 0: the GET stream
	nextStream int64
	seq        uint64   // last event sequence number
	events     []*event // replay buffer, in seq order
	bufBytes   int
	peakBytes  int // the largest bufBytes
	dropped    int // undelivered events evicted
	// room wakes readStdout when it holds the child's output back (see
	// waitRoom): events were delivered, streams detached.
	room     chan struct{}
	heldBack bool // readStdout waits for room (logged once per episode)
}

// call is a client request in flight to the child.
type call struct {
	clientID    []byte // exact id bytes the client sent
	ourID       string // the id the child sees
	stream      *stream
	clientToken []byte // exact progress token the client sent, if any
	token       string // the progress token the child sees, if any
	client      string // who sent it: counted in srv's limits until answered
	// listen marks a subscriptions/listen request: its notifications name
	// it by id in _meta, and so does its result.
	listen bool
	// filter, if set, rewrites the response: a list under a policy.
	filter *listFilter
}

// stream is one SSE stream: a POST's answer stream or the standalone GET
// stream. It outlives its HTTP connection: events queue up and wait for a
// client to resume with Last-Event-ID.
type stream struct {
	num      int64
	call     *call         // nil for the standalone stream
	wake     chan struct{} // cap 1: new events
	attached bool          // an HTTP response is writing this stream
	complete bool          // the final response is in the buffer
	primed   uint64        // seq when the stream started: its events come after
	nEvents  int           // its events in the replay buffer
	// cut marks a stream of the shared child whose client fell too far
	// behind: its events are gone and its writer ends.
	cut bool
}

// event is one message on a stream.
type event struct {
	seq       uint64
	stream    *stream
	data      []byte
	response  bool // the final response of a POST stream
	isError   bool // ... and it is a JSON-RPC error
	code      int  // ... with this code
	status    int  // HTTP status if answered as plain JSON; 0 means 200
	delivered bool
}

func (e *event) id() string {
	return strconv.FormatInt(e.stream.num, 10) + "." + strconv.FormatUint(e.seq, 10)
}

func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

func newSession(srv *stdioServer, proc *process, owner string) *session {
	id := newSessionID()
	s := &session{
		id:         id,
		owner:      owner,
		srv:        srv,
		log:        srv.log.With("session", id[:8]),
		proc:       proc,
		done:       make(chan struct{}),
		start:      time.Now(),
		lastUsed:   time.Now(),
		pending:    make(map[string]*call),
		cancelled:  make(map[string]bool),
		byClientID: make(map[string]*call),
		tokens:     make(map[string]*call),
		streams:    make(map[int64]*stream),
		room:       make(chan struct{}, 1),
	}
	s.standalone = s.newStreamLocked()
	s.idle = time.AfterFunc(srv.h.opts.IdleTimeout, s.checkIdle)
	return s
}

// run owns the session's goroutines: it reads stdout and stderr, reaps
// the child and ends the session. It holds a reservation from
// Handler.acquire.
func (s *session) run() {
	defer s.srv.h.wg.Done()
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		s.readStdout()
	}()
	go func() {
		defer readers.Done()
		s.readStderr()
	}()
	werr := s.proc.wait()
	readersDone := make(chan struct{})
	go func() {
		readers.Wait()
		close(readersDone)
	}()
	// The group is dead, so the pipes hit EOF once drained, unless a process
	// escaped the group (setsid) holding them: bound that.
	select {
	case <-readersDone:
	case <-time.After(5 * time.Second):
		s.log.Warn("server output still open after exit; closing it")
		_ = s.proc.stdout.SetReadDeadline(time.Now())
		_ = s.proc.stderr.SetReadDeadline(time.Now())
		<-readersDone
	}
	s.proc.stdout.Close()
	s.proc.stderr.Close()
	s.srv.noteExit(s, werr)
	s.end(fmt.Errorf("server process ended (%s)", exitReason(werr)))
	s.log.Info("server process reaped", "pid", s.proc.pgid, "status", exitReason(werr))
	s.releaseIfOver()
}

// releaseIfOver hands a large replay buffer's memory back to the system
// once the session is over: when its child is reaped, and again when a
// writer that was stuck on a client that reads nothing gives up (it held
// the session until then).
func (s *session) releaseIfOver() {
	s.mu.Lock()
	over := s.ended && s.peakBytes >= replayMaxBytes/2
	s.mu.Unlock()
	if over {
		s.srv.h.releaseMemorySoon()
	}
}

// end ends the session once: requests in flight get an error response, new
// requests get 404, the child is asked to stop.
func (s *session) end(reason error) {
	s.endIf(reason, false)
}

// endIf ends the session as end does, but if onlyIdle, only while no HTTP
// request for it is in progress (checked under the same lock, so none can
// slip in between). It reports whether it ended the session.
func (s *session) endIf(reason error, onlyIdle bool) bool {
	s.mu.Lock()
	if s.ended || onlyIdle && s.active > 0 {
		s.mu.Unlock()
		return false
	}
	s.ended = true
	s.idle.Stop()
	// A pending call was (or was about to be) written to the child: it may
	// have run, so the client is told the outcome is unknown, never the
	// "not run, retry" of server_gone, which would invite a second run.
	for _, c := range s.pending {
		msg := "mcpproxy: " + reason.Error() + " after the request was sent and before an answer: it may or may not have been carried out, and was not sent again"
		data := map[string]string{"reason": reasonOutcomeUnknown}
		s.finishLocked(c, &event{data: errorBody(c.clientID, codeServerGone, msg, data), isError: true, code: codeServerGone, status: 502})
	}
	s.mu.Unlock()
	close(s.done)
	s.srv.remove(s)
	s.proc.stop(s.srv.h.opts.KillGrace)
	s.log.Info("session ended", "reason", reason.Error(), "duration", time.Since(s.start).Round(time.Millisecond))
	return true
}

// enter notes an HTTP request for the session; false if it has ended.
func (s *session) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return false
	}
	s.active++
	s.lastUsed = time.Now()
	return true
}

func (s *session) leave() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active--
	s.lastUsed = time.Now()
}

// idleSince reports whether no HTTP request for s is in progress, and since
// when.
func (s *session) idleSince() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastUsed, !s.ended && s.active == 0
}

// endIfIdle ends s for reason unless an HTTP request for it is in
// progress. A request arriving afterwards finds the session ended, as after
// the idle timeout: it gets 404 and its client starts a new session.
func (s *session) endIfIdle(reason error) bool {
	return s.endIf(reason, true)
}

func (s *session) checkIdle() {
	idle := s.srv.h.opts.IdleTimeout
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	if s.active > 0 {
		s.idle.Reset(idle)
		s.mu.Unlock()
		return
	}
	if left := idle - time.Since(s.lastUsed); left > 0 {
		s.idle.Reset(left)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.end(errIdle)
}

// writeLine writes one message (ending in '\n') to the child's stdin.
func (s *session) writeLine(line []byte) error {
	s.stdinMu.Lock()
	defer s.stdinMu.Unlock()
	if _, err := s.proc.stdin.Write(line); err != nil {
		return fmt.Errorf("mcpproxy: write to server %q: %w", s.srv.cfg.Name, err)
	}
	return nil
}

var errSessionEnded = errors.New("session ended")

// maxCancelled bounds the ids of cancelled calls kept to recognise their
// late answers.
const maxCancelled = 1024

// errDuplicateID is a request whose id is already in flight.
var errDuplicateID = errors.New("a request with this id is already in flight in this session")

// startCall registers a client request and returns it with the line to
// write to the child: body with its id replaced by ours. Children see
// small integer ids, so an id no float64 holds (or one that another
// client used) comes back exactly as the client sent it.
func (s *session) startCall(m *Message, body []byte, client string) (*call, []byte, error) {
	return s.startCallFiltered(m, body, client, nil)
}

// startCallFiltered is startCall for a request whose response lf
// rewrites (nil: none).
func (s *session) startCallFiltered(m *Message, body []byte, client string, lf *listFilter) (*call, []byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, nil, errSessionEnded
	}
	if !s.shared && s.byClientID[string(m.ID)] != nil {
		return nil, nil, errDuplicateID
	}
	if err := s.srv.takeCall(client); err != nil {
		return nil, nil, err
	}
	s.nextID++
	c := &call{clientID: m.ID, ourID: strconv.FormatInt(s.nextID, 10), listen: m.Method == "subscriptions/listen", client: client, filter: lf}
	c.stream = s.newStreamLocked()
	c.stream.call = c
	c.stream.attached = true
	edits := []edit{m.idEdit([]byte(c.ourID))}
	if m.ProgressToken != nil {
		// Tokens are remapped like ids: the child may round a number.
		c.clientToken = m.ProgressToken
		c.token = c.ourID
		s.tokens[c.token] = c
		edits = append(edits, m.tokenEdit([]byte(c.token)))
	}
	s.pending[c.ourID] = c
	if !s.shared {
		s.byClientID[string(c.clientID)] = c
	}
	return c, append(rewrite(body, edits...), '\n'), nil
}

// failCall answers c with an error made here, unless the child answered.
func (s *session) failCall(c *call, status, code int, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[c.ourID] == c {
		s.finishLocked(c, &event{data: errorBody(c.clientID, code, msg, nil), isError: true, code: code, status: status})
	}
}

// clientLine prepares a notification or response from the client for the
// child. A cancellation names the request by the client's id, which the
// child has never seen: it gets ours.
func (s *session) clientLine(m *Message, body []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, errSessionEnded
	}
	if m.CancelledID != nil {
		if c := s.byClientID[string(m.CancelledID)]; c != nil {
			return append(rewrite(body, m.cancelEdit([]byte(c.ourID))), '\n'), nil
		}
	}
	return append(rewrite(body), '\n'), nil
}

func (s *session) newStreamLocked() *stream {
	st := &stream{num: s.nextStream, wake: make(chan struct{}, 1), primed: s.seq}
	s.nextStream++
	s.streams[st.num] = st
	return st
}

// finishLocked ends c with its response ev.
func (s *session) finishLocked(c *call, ev *event) {
	s.forgetCallLocked(c)
	ev.response = true
	s.appendLocked(c.stream, ev)
}

func (s *session) forgetCallLocked(c *call) {
	if s.pending[c.ourID] == c {
		s.srv.releaseCall(c.client)
	}
	delete(s.pending, c.ourID)
	if s.byClientID[string(c.clientID)] == c {
		delete(s.byClientID, string(c.clientID))
	}
	if c.token != "" {
		delete(s.tokens, c.token)
	}
	c.stream.complete = true
}

// cancel abandons c, if still in flight, and tells the child
// (notifications/cancelled with the id it knows). In the stateless era a
// client closing its stream means exactly this.
func (s *session) cancel(c *call, reason string) {
	s.mu.Lock()
	line := s.cancelLocked(c, reason)
	s.mu.Unlock()
	if line == nil {
		return
	}
	if err := s.writeLine(line); err != nil {
		s.log.Debug("cannot pass on a cancellation", "err", err)
	}
}

// cancelLocked abandons c, if still in flight, and returns the
// notifications/cancelled line for the child (nil if c was not in flight).
func (s *session) cancelLocked(c *call, reason string) []byte {
	if s.pending[c.ourID] != c {
		return nil
	}
	s.forgetCallLocked(c)
	s.forgetLocked(c.stream)
	if len(s.cancelled) >= maxCancelled {
		clear(s.cancelled) // only spares a log line
	}
	s.cancelled[c.ourID] = true
	r, _ := json.Marshal(reason)
	return []byte(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":` + c.ourID + `,"reason":` + string(r) + "}}\n")
}

// appendLocked adds an event for st to the replay buffer and wakes its
// writer.
func (s *session) appendLocked(st *stream, ev *event) {
	s.seq++
	ev.seq, ev.stream = s.seq, st
	s.events = append(s.events, ev)
	s.bufBytes += len(ev.data)
	s.srv.noteBuffered(s.bufBytes)
	s.peakBytes = max(s.peakBytes, s.bufBytes)
	st.nEvents++
	s.evictLocked()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// evictLocked keeps the replay buffer within replayMaxEvents and
// replayMaxBytes. Oldest events go first, except that the newest event
// and events still waiting for a connected writer stay: a live stream never
// loses a message. An undelivered event of a stream nobody is connected to
// can go, with a warning.
func (s *session) evictLocked() {
	over := func() bool { return len(s.events) > replayMaxEvents || s.bufBytes > replayMaxBytes }
	evictable := func(ev *event) bool { return ev.delivered || !ev.stream.attached }
	for over() && len(s.events) > 1 && evictable(s.events[0]) {
		s.dropLocked(s.events[0])
		s.events[0] = nil
		s.events = s.events[1:]
	}
	if !over() {
		return
	}
	kept := make([]*event, 0, len(s.events))
	for i, ev := range s.events {
		if over() && i < len(s.events)-1 && evictable(ev) {
			s.dropLocked(ev)
			continue
		}
		kept = append(kept, ev)
	}
	s.events = kept
}

func (s *session) dropLocked(ev *event) {
	s.bufBytes -= len(ev.data)
	st := ev.stream
	st.nEvents--
	if !ev.delivered {
		// Loud once per session, then quiet: a chatty child with no GET
		// stream open would otherwise log every message.
		s.dropped++
		level := slog.LevelDebug
		if s.dropped == 1 {
			level = slog.LevelWarn
		}
		s.log.Log(context.Background(), level, "replay buffer full: dropped a message no client has received",
			"stream", st.num, "bytes", len(ev.data), "message", clip(ev.data, 120), "dropped_so_far", s.dropped)
	}
	s.forgetLocked(st)
}

// forgetLocked drops a finished stream with nothing left to replay.
func (s *session) forgetLocked(st *stream) {
	if st.complete && !st.attached && st.nEvents == 0 {
		delete(s.streams, st.num)
	}
}

// eventsAfter returns st's events after seq cursor, and whether st's final
// response is in the buffer.
func (s *session) eventsAfter(st *stream, cursor uint64) (evs []*event, complete, cut bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range s.events {
		if ev.stream == st && ev.seq > cursor {
			evs = append(evs, ev)
		}
	}
	return evs, st.complete, st.cut
}

// waitFirst waits for the first event of a POST stream; nil if the client
// left first.
func (s *session) waitFirst(ctx context.Context, st *stream) *event {
	for {
		evs, _, cut := s.eventsAfter(st, st.primed)
		if len(evs) > 0 {
			return evs[0]
		}
		if cut {
			return nil
		}
		select {
		case <-st.wake:
		case <-ctx.Done():
			return nil
		case <-s.done:
			// end answered every call in flight before closing done.
			if evs, _, _ := s.eventsAfter(st, st.primed); len(evs) > 0 {
				return evs[0]
			}
			return nil
		}
	}
}

// pump writes st's events after cursor to sw until the final response,
// the client leaving or the session ending, with keep-alive comments while
// idle. It returns the last event written.
func (s *session) pump(ctx context.Context, sw *sseWriter, st *stream, cursor uint64) (last *event) {
	ka := time.NewTicker(s.srv.h.opts.KeepAlive)
	defer ka.Stop()
	defer s.releaseIfOver()
	// flush writes what is buffered; done means the stream is over.
	flush := func() (done bool) {
		evs, complete, cut := s.eventsAfter(st, cursor)
		if cut {
			return true
		}
		for _, ev := range evs {
			if err := sw.event(ev); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					s.log.Warn("client read nothing of its stream for the write timeout: cut it; its messages wait in the replay buffer for a resume with Last-Event-ID",
						"stream", st.num, "timeout", s.srv.h.opts.WriteTimeout, "next_event", ev.id())
				} else {
					s.log.Debug("SSE client went away", "stream", st.num, "err", err)
				}
				return true
			}
			s.markDelivered(ev)
			cursor, last = ev.seq, ev
			if ev.response {
				return true
			}
		}
		// A resumed stream whose response was already sent has no more.
		return complete
	}
	for {
		if flush() {
			return last
		}
		select {
		case <-st.wake:
		case <-ka.C:
			if err := sw.comment("keepalive"); err != nil {
				return last
			}
		case <-ctx.Done():
			return last
		case <-s.done:
			flush() // the errors end left for calls in flight
			return last
		}
	}
}

// resumePoint finds the stream and position a GET continues from: the
// stream and event named by Last-Event-ID, or else the standalone stream
// from its oldest undelivered message.
func (s *session) resumePoint(lastID string) (*stream, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if lastID == "" {
		cursor := s.seq
		for _, ev := range s.events {
			if ev.stream == s.standalone && !ev.delivered {
				cursor = ev.seq - 1
				break
			}
		}
		return s.standalone, cursor, nil
	}
	numStr, seqStr, ok := strings.Cut(lastID, ".")
	num, err1 := strconv.ParseInt(numStr, 10, 64)
	seq, err2 := strconv.ParseUint(seqStr, 10, 64)
	if !ok || err1 != nil || err2 != nil || num < 0 || seq > s.seq {
		return nil, 0, fmt.Errorf("Last-Event-ID %q is not an event id of this session", clip([]byte(lastID), 40))
	}
	st := s.streams[num]
	if st == nil {
		return nil, 0, fmt.Errorf("Last-Event-ID %q: stream %d is over or no longer in the replay buffer", lastID, num)
	}
	return st, seq, nil
}

func (s *session) markDelivered(ev *event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev.delivered = true
	s.roomLocked()
}

// roomLocked wakes readStdout if it waits for room in the replay buffer.
func (s *session) roomLocked() {
	if s.heldBack {
		select {
		case s.room <- struct{}{}:
		default:
		}
	}
}

// discard removes a delivered plain-JSON answer from the replay buffer:
// without an event id no client can ask for it again.
func (s *session) discard(ev *event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.events {
		if e == ev {
			s.events = slices.Delete(s.events, i, i+1)
			s.bufBytes -= len(ev.data)
			ev.stream.nEvents--
			s.forgetLocked(ev.stream)
			s.roomLocked()
			return
		}
	}
}

// attach claims st for one HTTP response; false if another has it.
func (s *session) attach(st *stream) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.attached {
		return false
	}
	st.attached = true
	return true
}

func (s *session) detach(st *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st.attached = false
	if s.shared {
		// Stateless streams cannot be resumed: nothing to keep.
		s.dropStreamLocked(st)
	}
	s.forgetLocked(st)
	s.evictLocked()
	s.roomLocked()
}

// waitRoom holds the child's output back while the replay buffer is full
// of events that may not be dropped: undelivered events of streams a
// client is connected to. The bound (replayMaxEvents, replayMaxBytes)
// holds for them as for the rest, give or take the one message that
// crossed it, however fast the child writes and however slowly a client
// reads. Reading stops, the pipe fills and the child blocks on its next
// write: backpressure, so a slow reader loses nothing. A client that
// reads nothing at all is cut by the write timeout (its messages wait in
// the buffer, within its bound, for a resume), which makes room again.
//
// The shared child of the stateless era serves every client of the
// server, so it is never held back for one: the stream furthest behind is
// cut instead and its request cancelled (these streams are not
// resumable), with a logged reason.
func (s *session) waitRoom() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.ended {
		s.evictLocked() // delivered events make room only once evicted
		st, n, size := s.fullLocked()
		if st == nil {
			if s.heldBack {
				s.heldBack = false
				s.log.Info("server output flowing again")
			}
			return
		}
		if s.shared {
			s.cutLocked(st, n, size)
			continue
		}
		if !s.heldBack {
			s.heldBack = true
			s.log.Warn("a client is not reading its stream: holding the server's output back until it does (or its write times out)",
				"stream", st.num, "waiting_events", n, "waiting_bytes", size)
		}
		s.mu.Unlock()
		select {
		case <-s.room:
		case <-s.done:
		}
		s.mu.Lock()
	}
}

// fullLocked reports whether the events that may not be dropped fill the
// replay buffer's bound; if so, it returns the stream with the most of
// them, and their number and size in all.
func (s *session) fullLocked() (most *stream, n, size int) {
	if len(s.events) < replayMaxEvents && s.bufBytes < replayMaxBytes {
		return nil, 0, 0
	}
	// A chatty child with no GET stream open keeps the buffer at its bound
	// with events that may go: this scan, not the one below, runs then.
	for _, ev := range s.events {
		if !ev.delivered && ev.stream.attached {
			n++
			size += len(ev.data)
		}
	}
	if n < replayMaxEvents && size < replayMaxBytes {
		return nil, 0, 0
	}
	per := make(map[*stream]int)
	for _, ev := range s.events {
		if !ev.delivered && ev.stream.attached {
			per[ev.stream] += len(ev.data)
		}
	}
	for st, b := range per {
		if most == nil || b > per[most] {
			most = st
		}
	}
	return most, n, size
}

// dropStreamLocked drops the buffered events of stream st (a stateless
// one, which cannot be resumed).
func (s *session) dropStreamLocked(st *stream) {
	s.events = slices.DeleteFunc(s.events, func(ev *event) bool {
		if ev.stream != st {
			return false
		}
		s.bufBytes -= len(ev.data)
		st.nEvents--
		return true
	})
}

// cutLocked ends stream st of the shared child: its events are dropped,
// its writer ends and its request is cancelled.
func (s *session) cutLocked(st *stream, n, size int) {
	s.log.Warn("a stateless client is not reading its stream: cut it and cancelled its request (the shared server is never held back for one client)",
		"stream", st.num, "waiting_events", n, "waiting_bytes", size)
	st.cut = true
	s.dropStreamLocked(st)
	select {
	case st.wake <- struct{}{}:
	default:
	}
	if st.call == nil {
		return
	}
	line := s.cancelLocked(st.call, "the client was not reading the request's stream")
	if line == nil {
		return
	}
	// Not under s.mu, and not from readStdout's goroutine, which the
	// child may be blocked on: as strayLocked.
	s.srv.h.wg.Add(1)
	go func() {
		defer s.srv.h.wg.Done()
		if err := s.writeLine(line); err != nil {
			s.log.Debug("cannot pass on a cancellation", "err", err)
		}
	}()
}

// fromChild routes one line the child wrote to stdout.
func (s *session) fromChild(line []byte) {
	m, err := Peek(line)
	if err != nil {
		s.log.Warn("server wrote something that is not a JSON-RPC message to stdout; ignored",
			"err", err, "line", clip(line, 200))
		return
	}
	// SSE data must stay on one line; in valid JSON a CR is whitespace.
	if bytes.IndexByte(line, '\r') >= 0 {
		line = bytes.ReplaceAll(line, []byte{'\r'}, []byte{' '})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		s.log.Debug("message after session end dropped", "kind", m.Kind.String(), "method", m.Method)
		return
	}
	switch m.Kind {
	case KindResponse, KindError:
		c := s.pending[string(m.ID)]
		if c == nil {
			if s.cancelled[string(m.ID)] {
				delete(s.cancelled, string(m.ID))
				s.log.Debug("server answered a cancelled request; dropped", "id", clip(m.ID, 40))
				return
			}
			s.log.Warn("server answered a request that is not in flight; dropped", "id", clip(m.ID, 40), "message", clip(line, 200))
			return
		}
		edits := []edit{m.idEdit(c.clientID)}
		if c.listen {
			if e, ok := m.resultSubscriptionEdit(line, []byte(c.ourID), c.clientID); ok {
				edits = append(edits, e)
			}
		}
		data := rewrite(line, edits...)
		if c.filter != nil && m.Kind == KindResponse {
			data = c.filter.v.filterList(data, c.filter.kind)
		}
		s.finishLocked(c, &event{data: data, isError: m.Kind == KindError, code: m.ErrorCode})
		return
	case KindNotification:
		if m.Method == "notifications/progress" && m.ProgressToken != nil {
			if c := s.tokens[string(m.ProgressToken)]; c != nil {
				s.appendLocked(c.stream, &event{data: rewrite(line, m.tokenEdit(c.clientToken))})
				return
			}
		}
		// A notification of a subscriptions/listen stream names the listen
		// request by the id the child saw.
		if m.SubscriptionID != nil {
			if c := s.pending[string(m.SubscriptionID)]; c != nil && c.listen {
				s.appendLocked(c.stream, &event{data: rewrite(line, m.subscriptionEdit(c.clientID))})
				return
			}
		}
	}
	if s.shared {
		s.strayLocked(&m, line)
		return
	}
	s.appendLocked(s.routeLocked(), &event{data: line})
}

// strayLocked handles a message of the shared child that names no
// request. Guessing a client would leak one client's messages to another,
// so a notification is dropped, and a request (which the 2026-07-28 era
// does not have on stdio) is refused so the child does not wait forever.
func (s *session) strayLocked(m *Message, line []byte) {
	if m.Kind != KindRequest {
		s.log.Debug("stateless server sent a message for no request; dropped", "method", m.Method, "message", clip(line, 120))
		return
	}
	s.log.Warn("stateless server sent a request; refused", "method", m.Method)
	refusal := append(errorBody(m.ID, codeMethodNotFound,
		"mcpproxy: no client can answer server requests in the stateless protocol era", nil), '\n')
	// Not under s.mu: the write may block. run, which is reading our
	// caller's stdout, keeps the WaitGroup above zero, so Add is safe.
	s.srv.h.wg.Add(1)
	go func() {
		defer s.srv.h.wg.Done()
		if err := s.writeLine(refusal); err != nil {
			s.log.Debug("cannot refuse a server request", "err", err)
		}
	}()
}

// routeLocked picks the stream for a server request or notification that
// names no request: the most recent request in flight whose client is
// connected, else the standalone stream.
func (s *session) routeLocked() *stream {
	var best *call
	var bestID int64
	for _, c := range s.pending {
		if !c.stream.attached {
			continue
		}
		id, _ := strconv.ParseInt(c.ourID, 10, 64)
		if best == nil || id > bestID {
			best, bestID = c, id
		}
	}
	if best != nil {
		return best.stream
	}
	return s.standalone
}

// readStdout splits the child's stdout into messages. Lines have no length
// limit but MaxMessageBytes.
func (s *session) readStdout() {
	max := s.srv.h.opts.MaxMessageBytes
	br := bufio.NewReaderSize(s.proc.stdout, 64<<10)
	var msg []byte
	var skipping bool
	var prefix []byte
	var skipped int64
	for {
		chunk, err := br.ReadSlice('\n')
		switch {
		case skipping:
			skipped += int64(len(chunk))
		case int64(len(msg)+len(chunk)) > max:
			const keep = 64 << 10 // enough to find the id in
			skipping = true
			skipped = int64(len(msg) + len(chunk))
			if len(msg) < keep {
				msg = append(msg, chunk[:min(len(chunk), keep-len(msg))]...)
			}
			prefix = msg[:min(len(msg), keep)]
			msg = nil
		default:
			msg = append(msg, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		// The message ended: at a newline, or at EOF.
		if skipping {
			s.oversized(prefix, skipped)
			skipping, prefix = false, nil
		} else if len(msg) > 0 {
			if line := bytes.TrimSpace(msg); len(line) > 0 {
				s.fromChild(line)
				s.waitRoom()
			}
			msg = nil
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
				s.log.Warn("reading server stdout", "err", err)
			}
			return
		}
	}
}

// oversized handles a message from the child larger than MaxMessageBytes:
// it is dropped, and the request it answers (if its id came early enough
// to find) gets an error instead of waiting forever.
func (s *session) oversized(prefix []byte, n int64) {
	s.log.Error("server message exceeds MaxMessageBytes; dropped",
		"bytes", n, "max", s.srv.h.opts.MaxMessageBytes, "start", clip(prefix, 120))
	id := peekIDPrefix(prefix)
	if id == nil {
		return
	}
	s.mu.Lock()
	c := s.pending[string(id)]
	s.mu.Unlock()
	if c != nil {
		s.failCall(c, 502, codeInternal, fmt.Sprintf(
			"mcpproxy: the server's response is %d bytes or more, over the limit of %d bytes", n, s.srv.h.opts.MaxMessageBytes))
	}
}

// readStderr logs the child's stderr, one line at a time, shortened.
func (s *session) readStderr() {
	const maxLine = 1024
	br := bufio.NewReaderSize(s.proc.stderr, 4096)
	var line []byte
	total := 0
	for {
		chunk, err := br.ReadSlice('\n')
		total += len(chunk)
		if room := maxLine - len(line); room > 0 {
			line = append(line, chunk[:min(room, len(chunk))]...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if text := bytes.TrimRight(line, "\r\n"); len(text) > 0 {
			s.log.Info("server stderr", "line", string(text), "bytes", total)
		}
		line, total = line[:0], 0
		if err != nil {
			return
		}
	}
}
