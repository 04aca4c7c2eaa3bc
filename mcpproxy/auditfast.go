package mcpproxy

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// The audit on the fast path: an exchange route took keeps its way (a
// url: server's exchange is still forwarded in wire form), with hooks
// that record it. A served exchange (the stdio bridge, a refusal) gets an
// auditWriter around its ResponseWriter; a forwarded one shows its body
// to PeekBody when held in memory, its answer as written to the client to
// Tap (parsed by wireTap), and its end to Finished.

// auditExchange adds the audit's hooks to x, an exchange route took for
// head.
func (h *Handler) auditExchange(head *httpfwd.Head, x *httpfwd.Exchange) {
	m, target, _, _ := head.RequestLine()
	info := &exchangeInfo{path: string(target), method: httpfwd.MethodString(m), start: time.Now()}
	for _, f := range head.Fields {
		switch name := head.Name(f); {
		case info.client == "" && httpfwd.EqualFold(name, ClientHeader):
			info.client = string(head.Value(f))
		case info.session == "" && httpfwd.EqualFold(name, headerSession):
			info.session = string(head.Value(f))
		}
	}
	// An exchange served here (a refusal, a policy's rewriting path) is
	// recorded from its ResponseWriter.
	servedHere := false
	audited := func(serve func(context.Context, http.ResponseWriter, *httpfwd.Head, []byte)) func(context.Context, http.ResponseWriter, *httpfwd.Head, []byte) {
		return func(ctx context.Context, w http.ResponseWriter, head *httpfwd.Head, body []byte) {
			servedHere = true
			aw := &auditWriter{ResponseWriter: w, rc: http.NewResponseController(w)}
			serve(ctx, aw, head, body)
			info.bytesIn, info.answerSession = int64(len(body)), aw.Header().Get(headerSession)
			if info.kept, info.over = body, len(body) > h.auditMax; info.over {
				info.kept = nil
			}
			h.record(info, aw)
		}
	}
	if x.Serve != nil {
		x.Serve = audited(x.Serve)
		return
	}
	if inspect := x.Inspect; inspect != nil {
		// A policy may take the exchange off the forwarding path (to
		// refuse it, or to rewrite a list): that one is recorded as
		// served, not by the hooks below, which then never run.
		x.Inspect = func(head *httpfwd.Head, body []byte) *httpfwd.Exchange {
			alt := inspect(head, body)
			if alt == nil || alt.Serve == nil {
				return alt
			}
			a := *alt // alt may be shared by every exchange of its server
			a.Serve = audited(alt.Serve)
			return &a
		}
	}
	aw := &auditWriter{}
	tap := &wireTap{aw: aw}
	if head.ContentLength > 0 {
		info.bytesIn = head.ContentLength
		info.over = true // unless PeekBody sees it
	}
	x.PeekBody = func(body []byte) {
		// The body is whole here, and its memory goes back after the
		// exchange: a copy.
		if len(body) <= h.auditMax {
			info.kept, info.over = bytes.Clone(body), false
		}
	}
	x.Tap = tap.write
	x.Finished = func(res httpfwd.Result) {
		if servedHere {
			return // recorded by audited
		}
		if aw.status == 0 {
			aw.status = res.Status
		}
		info.answerSession = tap.session
		h.record(info, aw)
	}
}

// wireTap reads an HTTP/1.1 answer as the fast path writes it to the
// client — status line and headers, then the body with its framing
// (Content-Length or chunked) — and hands the body to an auditWriter.
type wireTap struct {
	aw      *auditWriter
	state   uint8
	head    []byte
	session string
	chunked bool
	left    int64 // body bytes left: of the answer, or of the chunk
	line    []byte
}

const (
	tapHead = iota
	tapBody
	tapChunkSize
	tapChunkData
	tapChunkEnd
	tapTrailer
	tapDone
)

// maxTapHead bounds an answer head the tap reads; a larger one is not
// parsed (the record then has only the status Finished gives).
const maxTapHead = 64 << 10

func (t *wireTap) write(p []byte) {
	for len(p) > 0 {
		switch t.state {
		case tapHead:
			t.head = append(t.head, p...)
			i := bytes.Index(t.head, []byte("\r\n\r\n"))
			if i < 0 {
				if len(t.head) > maxTapHead {
					t.state = tapDone
				}
				return
			}
			rest := t.head[i+4:]
			if !t.parseHead(t.head[:i]) {
				t.head = t.head[:0]
				p = rest // an interim answer: the final one follows
				continue
			}
			p = append([]byte(nil), rest...)
			t.head = nil
		case tapBody:
			n := int64(len(p))
			if t.left >= 0 && n > t.left {
				n = t.left
			}
			t.body(p[:n])
			p = p[n:]
			if t.left >= 0 {
				t.left -= n
				if t.left == 0 {
					t.state = tapDone
				}
			}
		case tapChunkSize, tapChunkEnd, tapTrailer:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				if len(t.line) < 4096 {
					t.line = append(t.line, p...)
				}
				return
			}
			t.line = append(t.line, p[:i]...)
			p = p[i+1:]
			line := bytes.TrimRight(t.line, "\r")
			t.line = t.line[:0]
			switch t.state {
			case tapChunkSize:
				size, _, _ := bytes.Cut(line, []byte(";"))
				n, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 64)
				switch {
				case err != nil || n < 0:
					t.state = tapDone
				case n == 0:
					t.state = tapTrailer
				default:
					t.left, t.state = n, tapChunkData
				}
			case tapChunkEnd:
				t.state = tapChunkSize
			case tapTrailer:
				if len(line) == 0 {
					t.state = tapDone
				}
			}
		case tapChunkData:
			n := min(int64(len(p)), t.left)
			t.body(p[:n])
			p, t.left = p[n:], t.left-n
			if t.left == 0 {
				t.state = tapChunkEnd
			}
		default:
			return
		}
	}
}

func (t *wireTap) body(p []byte) {
	t.aw.n += int64(len(p))
	t.aw.watch(p)
}

// parseHead takes the answer head; false for an interim (1xx) answer.
func (t *wireTap) parseHead(head []byte) bool {
	statusLine, fields, _ := bytes.Cut(head, []byte("\r\n"))
	_, rest, _ := bytes.Cut(statusLine, []byte(" "))
	code, _ := strconv.Atoi(string(bytes.TrimSpace(firstWord(rest))))
	if code >= 100 && code < 200 {
		return false
	}
	t.aw.status = code
	t.left = -1
	for len(fields) > 0 {
		var line []byte
		line, fields, _ = bytes.Cut(fields, []byte("\r\n"))
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case httpfwd.EqualFold(k, "Content-Type"):
			t.aw.sse = bytes.HasPrefix(v, []byte("text/event-stream"))
		case httpfwd.EqualFold(k, headerSession):
			t.session = string(v)
		case httpfwd.EqualFold(k, "Transfer-Encoding"):
			t.chunked = bytes.Contains(bytes.ToLower(v), []byte("chunked"))
		case httpfwd.EqualFold(k, "Content-Length"):
			if n, err := strconv.ParseInt(string(v), 10, 64); err == nil {
				t.left = n
			}
		}
	}
	switch {
	case t.chunked:
		t.state = tapChunkSize
	case t.left == 0 || code == http.StatusNoContent || code == http.StatusNotModified:
		t.state = tapDone
	default:
		t.state = tapBody // to Content-Length, or to the connection's end
	}
	return true
}

func firstWord(b []byte) []byte {
	w, _, _ := bytes.Cut(b, []byte(" "))
	return w
}
