package mcptest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// maxLine bounds one JSON-RPC message read from stdin.
const maxLine = 16 << 20

// ServeStdio serves a new conformance fixture over newline-delimited JSON-RPC
// on in and out until in ends or ctx is done, then cancels the requests
// still running and waits for them. Diagnostics go to logger (nil discards
// them); out carries nothing but protocol messages.
//
// Like the HTTP transport, and unlike mcp-go's StdioServer (which writes
// notifications from a goroutine of their own, so the last progress
// notification can follow the result), it writes every message a request's
// handler sends before that request's response, in order.
func ServeStdio(ctx context.Context, in io.Reader, out io.Writer, logger *slog.Logger) error {
	return serveStdio(ctx, NewConformanceServer(), in, out, logger)
}

// ServeStdioServer is ServeStdio for a server of the caller's (NewServer).
func ServeStdioServer(ctx context.Context, srv *server.MCPServer, in io.Reader, out io.Writer, logger *slog.Logger) error {
	return serveStdio(ctx, srv, in, out, logger)
}

func serveStdio(ctx context.Context, srv *server.MCPServer, in io.Reader, out io.Writer, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	table := &tokenTable{}
	ctx, cancel := context.WithCancel(withLogger(context.WithValue(ctx, tokenTableKey{}, table), logger))
	defer cancel()

	t := &streamable{srv: srv, logger: logger}
	s := t.newSession()
	s.id = "stdio"
	lw := &lineWriter{w: out}
	if err := srv.RegisterSession(ctx, s); err != nil {
		return fmt.Errorf("mcptest: register stdio session: %w", err)
	}
	defer srv.UnregisterSession(context.Background(), s.id)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: stop the requests, then wait
	wg.Add(1)
	subs := &listeners{m: make(map[*listener]struct{})}
	// legacy is set by initialize: broadcasts then go out untagged. (mcp-go
	// marks the session initialized for 2026-07-28 requests too.)
	var legacy atomic.Bool
	go func() { // broadcasts, the stdio equivalent of the GET stream
		defer wg.Done()
		for {
			select {
			case n := <-s.notifications:
				if legacy.Load() { // a client of the 2025 era
					lw.event(n)
				}
				subs.deliver(n, lw)
			case <-ctx.Done():
				return
			}
		}
	}()

	lines := make(chan []byte)
	readErr := make(chan error, 1)
	go func() {
		// Owned by the caller's reader: it ends when in does. Nothing else
		// can unblock a Read, so on ctx cancellation it is left to finish
		// with in (close in to reclaim it).
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 0, 64<<10), maxLine)
		for sc.Scan() {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			line = bytes.Clone(line)
			table.observe(line)
			select {
			case lines <- line:
			case <-ctx.Done():
				readErr <- ctx.Err()
				return
			}
		}
		readErr <- sc.Err()
	}()

	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-readErr:
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("mcptest: read stdin: %w", err)
			}
			return nil
		case line := <-lines:
			var msg incoming
			if err := json.Unmarshal(line, &msg); err != nil {
				lw.final(mcp.NewJSONRPCError(mcp.NewRequestId(nil), mcp.PARSE_ERROR, "mcptest: not a JSON-RPC message: "+err.Error(), nil))
				continue
			}
			switch {
			case msg.Method == "" && len(msg.ID) > 0:
				s.deliverResponse(msg)
			case len(msg.ID) == 0 || bytes.Equal(msg.ID, []byte("null")):
				// Notifications run in order, before later messages: a
				// tools/call must see notifications/initialized first.
				if resp := srv.HandleMessage(srv.WithContext(ctx, s), line); resp != nil {
					logger.Warn("mcptest: notification produced a response", "method", msg.Method)
				}
			default:
				if msg.Method == string(mcp.MethodInitialize) {
					legacy.Store(true)
				}
				var out sink = lw
				if msg.Method == string(mcp.MethodSubscriptionsListen) {
					out = &listenSink{lw: lw, subs: subs, id: msg.ID}
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					runRequest(ctx, srv, s.forRequest(), line, out)
				}()
			}
		}
	}
}

// lineWriter writes newline-delimited JSON-RPC messages, one at a time.
type lineWriter struct {
	mu     sync.Mutex
	w      io.Writer
	broken bool
}

func (lw *lineWriter) event(msg any) {
	b, err := json.Marshal(msg)
	if err != nil {
		b, _ = json.Marshal(mcp.NewJSONRPCError(mcp.NewRequestId(nil), mcp.INTERNAL_ERROR, "mcptest: encode message: "+err.Error(), nil))
	}
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.broken {
		return
	}
	if _, err := lw.w.Write(append(b, '\n')); err != nil {
		lw.broken = true
	}
}

func (lw *lineWriter) final(resp mcp.JSONRPCMessage) {
	if resp != nil {
		lw.event(resp)
	}
}

// Over stdio in the 2026-07-28 era, every subscriptions/listen request
// shares the one output: a notification it delivers carries
// _meta["io.modelcontextprotocol/subscriptionId"], the id of the listen
// request (its raw JSON, so any id comes back exactly). mcp-go's handler
// sends the acknowledgement and then blocks; the transport delivers the
// server's broadcasts to each listener that opted in to them.

type listener struct {
	id     json.RawMessage
	filter mcp.SubscriptionFilter
}

type listeners struct {
	mu sync.Mutex
	m  map[*listener]struct{}
}

// deliver writes n, tagged, once for each listener whose filter allows it.
func (ls *listeners) deliver(n mcp.JSONRPCNotification, lw *lineWriter) {
	ls.mu.Lock()
	var to []*listener
	for l := range ls.m {
		if l.allows(n) {
			to = append(to, l)
		}
	}
	ls.mu.Unlock()
	for _, l := range to {
		tagged := n
		meta := make(map[string]any, len(n.Params.Meta)+1)
		maps.Copy(meta, n.Params.Meta)
		meta[mcp.MetaKeySubscriptionID] = l.id
		tagged.Params.Meta = meta
		lw.event(tagged)
	}
}

func (l *listener) allows(n mcp.JSONRPCNotification) bool {
	switch mcp.MCPMethod(n.Method) {
	case mcp.MethodNotificationToolsListChanged:
		return l.filter.ToolsListChanged
	case mcp.MethodNotificationPromptsListChanged:
		return l.filter.PromptsListChanged
	case mcp.MethodNotificationResourcesListChanged:
		return l.filter.ResourcesListChanged
	case mcp.MethodNotificationResourceUpdated:
		uri, _ := n.Params.AdditionalFields["uri"].(string)
		return slices.Contains(l.filter.ResourceSubscriptions, uri)
	}
	return false
}

// listenSink writes a subscriptions/listen request's messages and makes the
// request a listener from its acknowledgement (which carries the filter the
// server agreed to) until its response: nothing of the subscription is
// written before the acknowledgement.
type listenSink struct {
	lw   *lineWriter
	subs *listeners
	id   json.RawMessage
	l    *listener
}

func (ls *listenSink) event(msg any) {
	ls.lw.event(msg)
	n, ok := msg.(mcp.JSONRPCNotification)
	if !ok || n.Method != string(mcp.MethodNotificationSubscriptionsAcknowledged) || ls.l != nil {
		return
	}
	l := &listener{id: ls.id}
	if b, err := json.Marshal(n.Params.AdditionalFields["notifications"]); err == nil {
		_ = json.Unmarshal(b, &l.filter)
	}
	ls.l = l
	ls.subs.mu.Lock()
	ls.subs.m[l] = struct{}{}
	ls.subs.mu.Unlock()
}

func (ls *listenSink) final(resp mcp.JSONRPCMessage) {
	if ls.l != nil {
		ls.subs.mu.Lock()
		delete(ls.subs.m, ls.l)
		ls.subs.mu.Unlock()
	}
	ls.lw.final(resp)
}
