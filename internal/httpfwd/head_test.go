package httpfwd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// field is a header line as a test expects it.
type field struct{ name, value string }

func fieldsOf(h *Head) []field {
	var out []field
	for _, f := range h.Fields {
		out = append(out, field{string(h.Name(f)), string(h.Value(f))})
	}
	return out
}

// endless repeats unit forever: a peer that never ends its head.
type endless struct {
	unit []byte
	off  int
}

func (e *endless) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], e.unit[e.off:])
		n += c
		e.off = (e.off + c) % len(e.unit)
	}
	return n, nil
}

func TestReadHead(t *testing.T) {
	const mcpPost = "POST /ts/mcp?x=1 HTTP/1.1\r\nHost: relay.example\r\nContent-Type: application/json\r\n" +
		"Accept: application/json, text/event-stream\r\nMcp-Session-Id: abc\r\nContent-Length: 5\r\n\r\nhello"
	longValue := strings.Repeat("v", 200)
	tests := []struct {
		name string
		in   io.Reader
		size int // bufio.Reader size, 0 for the default
		// err: "" none, "head" *HeadError, "eof" exactly io.EOF, "cut" a
		// read error that is neither (the head was cut short).
		err    string
		start  string
		fields []field
		rest   string // what follows the head in the reader
		check  func(t *testing.T, h *Head)
	}{
		{
			name: "MCP POST request", in: strings.NewReader(mcpPost),
			start: "POST /ts/mcp?x=1 HTTP/1.1",
			fields: []field{{"Host", "relay.example"}, {"Content-Type", "application/json"},
				{"Accept", "application/json, text/event-stream"}, {"Mcp-Session-Id", "abc"}, {"Content-Length", "5"}},
			rest: "hello",
			check: func(t *testing.T, h *Head) {
				if want := mcpPost[:strings.Index(mcpPost, "\r\n\r\n")+2]; string(h.Raw) != want {
					t.Errorf("Raw %q, want %q", h.Raw, want)
				}
				if h.ContentLength != 5 || h.Chunked || h.OtherEncoding || h.Close || h.ConnTokens != 0 {
					t.Errorf("framing %+v", h)
				}
				if v, ok := h.Get("mcp-session-id"); !ok || string(v) != "abc" {
					t.Errorf("Get(mcp-session-id) = %q, %v", v, ok)
				}
				if _, ok := h.Get("Authorization"); ok {
					t.Error("Get found an absent header")
				}
				if got := string(h.Line(h.Fields[0])); got != "Host: relay.example\r\n" {
					t.Errorf("Line %q", got)
				}
			},
		},
		{
			name: "response", in: strings.NewReader("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\ndata: 1\n\n"),
			start:  "HTTP/1.1 200 OK",
			fields: []field{{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"}},
			rest:   "data: 1\n\n",
			check: func(t *testing.T, h *Head) {
				if h.ContentLength != -1 {
					t.Errorf("ContentLength %d without a Content-Length header", h.ContentLength)
				}
			},
		},
		{
			name: "bare LF lines", in: strings.NewReader("GET /a HTTP/1.1\nHost: h\nX-Pad: \t spaced \t\nEmpty:\n\nrest"),
			start: "GET /a HTTP/1.1", fields: []field{{"Host", "h"}, {"X-Pad", "spaced"}, {"Empty", ""}}, rest: "rest",
		},
		{
			name: "leading empty lines skipped", in: strings.NewReader("\r\n\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"),
			start: "GET / HTTP/1.1", fields: []field{{"Host", "h"}},
			check: func(t *testing.T, h *Head) {
				if !bytes.HasPrefix(h.Raw, []byte("GET ")) {
					t.Errorf("Raw %q keeps the empty lines", h.Raw)
				}
			},
		},
		{name: "obs-fold with spaces", in: strings.NewReader("GET / HTTP/1.1\r\nX-A: 1\r\n  continued\r\n\r\n"), err: "head"},
		{name: "obs-fold with tab", in: strings.NewReader("GET / HTTP/1.1\r\nX-A: 1\r\n\tcontinued\r\n\r\n"), err: "head"},
		{name: "space before colon", in: strings.NewReader("GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\n"), err: "head"},
		{name: "space in name", in: strings.NewReader("GET / HTTP/1.1\r\nX A: 1\r\n\r\n"), err: "head"},
		{name: "NUL in name", in: strings.NewReader("GET / HTTP/1.1\r\nX\x00A: 1\r\n\r\n"), err: "head"},
		{name: "separator in name", in: strings.NewReader("GET / HTTP/1.1\r\nX(A): 1\r\n\r\n"), err: "head"},
		{name: "non-ASCII in name", in: strings.NewReader("GET / HTTP/1.1\r\nX\xc3\xa9: 1\r\n\r\n"), err: "head"},
		{name: "empty name", in: strings.NewReader("GET / HTTP/1.1\r\n: v\r\n\r\n"), err: "head"},
		{name: "no colon", in: strings.NewReader("GET / HTTP/1.1\r\nHost\r\n\r\n"), err: "head"},
		{name: "NUL in value", in: strings.NewReader("GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n"), err: "head"},
		{name: "CR in value", in: strings.NewReader("GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n"), err: "head"},
		{name: "CR before CRLF", in: strings.NewReader("GET / HTTP/1.1\r\nX-A: a\r\r\n\r\n"), err: "head"},
		{name: "control byte in value", in: strings.NewReader("GET / HTTP/1.1\r\nX-A: a\x0bb\r\n\r\n"), err: "head"},
		{name: "DEL in value", in: strings.NewReader("GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n"), err: "head"},
		{
			name: "obs-text and tab inside value kept", in: strings.NewReader("GET / HTTP/1.1\r\nX-A: caf\xc3\xa9\tau lait\r\n\r\n"),
			start: "GET / HTTP/1.1", fields: []field{{"X-A", "caf\xc3\xa9\tau lait"}},
		},
		{name: "conflicting Content-Length", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), err: "head"},
		{
			name: "same Content-Length twice", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello"),
			start: "POST / HTTP/1.1", fields: []field{{"Content-Length", "5"}, {"content-length", "5"}}, rest: "hello",
			check: func(t *testing.T, h *Head) {
				if h.ContentLength != 5 {
					t.Errorf("ContentLength %d", h.ContentLength)
				}
			},
		},
		{
			name: "Content-Length 0", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
			start: "POST / HTTP/1.1", fields: []field{{"Content-Length", "0"}},
			check: func(t *testing.T, h *Head) {
				if h.ContentLength != 0 {
					t.Errorf("ContentLength %d", h.ContentLength)
				}
			},
		},
		{name: "Content-Length +5", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"), err: "head"},
		{name: "Content-Length -1", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), err: "head"},
		{name: "Content-Length -0", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: -0\r\n\r\n"), err: "head"},
		{name: "Content-Length empty", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: \r\n\r\n"), err: "head"},
		{name: "Content-Length list", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"), err: "head"},
		{name: "Content-Length hex", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n"), err: "head"},
		{name: "Content-Length underscore", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n"), err: "head"},
		{name: "Content-Length overflow", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n"), err: "head"},
		{name: "Content-Length then Transfer-Encoding", in: strings.NewReader("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), err: "head"},
		{name: "Transfer-Encoding then Content-Length", in: strings.NewReader("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), err: "head"},
		{name: "other Transfer-Encoding and Content-Length", in: strings.NewReader("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n"), err: "head"},
		{
			name: "chunked", in: strings.NewReader("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
			start: "POST / HTTP/1.1", fields: []field{{"Transfer-Encoding", "Chunked"}}, rest: "5\r\nhello\r\n0\r\n\r\n",
			check: func(t *testing.T, h *Head) {
				if !h.Chunked || h.OtherEncoding || h.ContentLength != -1 {
					t.Errorf("framing %+v", h)
				}
			},
		},
		{
			name: "gzip, chunked", in: strings.NewReader("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
			start: "POST / HTTP/1.1", fields: []field{{"Transfer-Encoding", "gzip, chunked"}},
			check: func(t *testing.T, h *Head) {
				if h.Chunked || !h.OtherEncoding {
					t.Errorf("Chunked %v OtherEncoding %v", h.Chunked, h.OtherEncoding)
				}
			},
		},
		{
			name: "chunked twice", in: strings.NewReader("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
			start: "POST / HTTP/1.1", fields: []field{{"Transfer-Encoding", "chunked"}, {"Transfer-Encoding", "chunked"}},
			check: func(t *testing.T, h *Head) {
				if h.Chunked || !h.OtherEncoding {
					t.Errorf("Chunked %v OtherEncoding %v", h.Chunked, h.OtherEncoding)
				}
			},
		},
		{
			name: "Connection close", in: strings.NewReader("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"),
			start: "GET / HTTP/1.1", fields: []field{{"Connection", "Close"}},
			check: func(t *testing.T, h *Head) {
				if !h.Close || h.ConnTokens != 0 {
					t.Errorf("Close %v ConnTokens %d", h.Close, h.ConnTokens)
				}
			},
		},
		{
			name: "Connection keep-alive", in: strings.NewReader("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"),
			start: "GET / HTTP/1.1", fields: []field{{"Connection", "keep-alive"}},
			check: func(t *testing.T, h *Head) {
				if h.Close || h.ConnTokens != 0 || h.IsConnToken([]byte("X-Foo")) {
					t.Errorf("Close %v ConnTokens %d", h.Close, h.ConnTokens)
				}
			},
		},
		{
			name: "Connection tokens", in: strings.NewReader("GET / HTTP/1.1\r\nConnection: keep-alive, X-Foo,, close\r\nX-Foo: 1\r\nconnection: Upgrade \r\n\r\n"),
			start: "GET / HTTP/1.1", fields: []field{{"Connection", "keep-alive, X-Foo,, close"}, {"X-Foo", "1"}, {"connection", "Upgrade"}},
			check: func(t *testing.T, h *Head) {
				if !h.Close || h.ConnTokens != 2 {
					t.Errorf("Close %v ConnTokens %d, want true 2", h.Close, h.ConnTokens)
				}
				for _, n := range []string{"X-Foo", "x-foo", "upgrade"} {
					if !h.IsConnToken([]byte(n)) {
						t.Errorf("IsConnToken(%q) false", n)
					}
				}
				for _, n := range []string{"X-Bar", "X-Fo", "Host"} {
					if h.IsConnToken([]byte(n)) {
						t.Errorf("IsConnToken(%q) true", n)
					}
				}
			},
		},
		{name: "endless header lines", in: &endless{unit: []byte("X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")}, err: "head"},
		{name: "endless header line", in: io.MultiReader(strings.NewReader("GET / HTTP/1.1\r\nX-Pad: "), &endless{unit: []byte("a")}), err: "head"},
		{name: "endless start line", in: &endless{unit: []byte("a")}, err: "head"},
		{name: "endless empty lines", in: &endless{unit: []byte("\r\n")}, err: "head"},
		{name: "EOF before any byte", in: strings.NewReader(""), err: "eof"},
		{name: "EOF after empty lines", in: strings.NewReader("\r\n\r\n"), err: "eof"},
		{name: "EOF in start line", in: strings.NewReader("GET / HT"), err: "cut"},
		{name: "EOF mid-head", in: strings.NewReader("GET / HTTP/1.1\r\nHost: h\r\n"), err: "cut"},
		{name: "EOF mid-line", in: strings.NewReader("GET / HTTP/1.1\r\nHost: h"), err: "cut"},
		{
			name: "line longer than the buffer gathered whole", size: 16,
			in:    strings.NewReader("GET /" + strings.Repeat("p", 40) + " HTTP/1.1\r\nX-Long: " + longValue + "\r\nHost: h\r\n\r\nafter"),
			start: "GET /" + strings.Repeat("p", 40) + " HTTP/1.1", fields: []field{{"X-Long", longValue}, {"Host", "h"}}, rest: "after",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			size := tc.size
			if size == 0 {
				size = 4096
			}
			br := bufio.NewReaderSize(tc.in, size)
			var h Head
			err := ReadHead(br, &h)
			var he *HeadError
			switch tc.err {
			case "head":
				if !errors.As(err, &he) {
					t.Fatalf("err %v, want a *HeadError", err)
				}
				return
			case "eof":
				if err != io.EOF {
					t.Fatalf("err %v, want io.EOF", err)
				}
				return
			case "cut":
				if err == nil || errors.Is(err, io.EOF) || errors.As(err, &he) {
					t.Fatalf("err %v, want a read error other than io.EOF and *HeadError", err)
				}
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("err %v, want io.ErrUnexpectedEOF", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadHead: %v", err)
			}
			if string(h.Start) != tc.start {
				t.Errorf("Start %q, want %q", h.Start, tc.start)
			}
			if got := fieldsOf(&h); !equalFields(got, tc.fields) {
				t.Errorf("fields %q, want %q", got, tc.fields)
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != tc.rest {
				t.Errorf("left %q, want %q", rest, tc.rest)
			}
			if tc.check != nil {
				tc.check(t, &h)
			}
		})
	}
}

func equalFields(a, b []field) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReadHeadReuse: a Head read again (pipelined heads, a pooled Head)
// holds only the new head, even after a larger one.
func TestReadHeadReuse(t *testing.T) {
	big := "POST /a HTTP/1.1\r\nX-Big: " + strings.Repeat("b", 5000) + "\r\nContent-Length: 3\r\nConnection: close, X-Big\r\nTransfer-Encoding: gzip\r\n"
	in := big[:strings.Index(big, "Transfer")] + "\r\nabcGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
	br := bufio.NewReaderSize(strings.NewReader(in), 64)
	var h Head
	if err := ReadHead(br, &h); err != nil {
		t.Fatal(err)
	}
	if h.ContentLength != 3 || !h.Close || h.ConnTokens != 1 || len(h.Fields) != 3 {
		t.Fatalf("first head: %+v", fieldsOf(&h))
	}
	if _, err := br.Discard(3); err != nil {
		t.Fatal(err)
	}
	if err := ReadHead(br, &h); err != nil {
		t.Fatal(err)
	}
	if string(h.Start) != "GET /b HTTP/1.1" || string(h.Raw) != "GET /b HTTP/1.1\r\nHost: h\r\n" ||
		!equalFields(fieldsOf(&h), []field{{"Host", "h"}}) {
		t.Fatalf("second head: Start %q Raw %q fields %q", h.Start, h.Raw, fieldsOf(&h))
	}
	if h.ContentLength != -1 || h.Close || h.ConnTokens != 0 || h.Chunked || h.OtherEncoding {
		t.Fatalf("second head kept the first one's framing: %+v", h)
	}
	if err := ReadHead(br, &h); err != io.EOF {
		t.Fatalf("after the last head: %v, want io.EOF", err)
	}
}

func TestStatusCode(t *testing.T) {
	tests := []struct {
		start string
		code  int // 0: an error
	}{
		{"HTTP/1.1 200 OK", 200},
		{"HTTP/1.1 204", 204},
		{"HTTP/1.1 200 ", 200},
		{"HTTP/1.0 404 Not Found", 404},
		{"HTTP/1.1 103 Early Hints", 103},
		{"HTTP/1.1 599 Whatever you like", 599},
		{"HTTP/1.1 099 Low", 0},
		{"HTTP/1.1 20 OK", 0},
		{"HTTP/1.1 2000 OK", 0},
		{"HTTP/1.1  200 OK", 0},
		{"HTTP/1.1 2x0 OK", 0},
		{"HTTP/1.1 -20 OK", 0},
		{"HTTP/1.1-200 OK", 0},
		{"HTTP/2 200 OK", 0},
		{"HTTP/1.x 200 OK", 0},
		{"http/1.1 200 OK", 0},
		{"GET / HTTP/1.1", 0},
		{"", 0},
	}
	for _, tc := range tests {
		h := Head{Start: []byte(tc.start)}
		code, err := h.StatusCode()
		var he *HeadError
		switch {
		case tc.code == 0 && !errors.As(err, &he):
			t.Errorf("%q: %d, %v; want a *HeadError", tc.start, code, err)
		case tc.code != 0 && (err != nil || code != tc.code):
			t.Errorf("%q: %d, %v; want %d", tc.start, code, err, tc.code)
		}
	}
}

func TestRequestLine(t *testing.T) {
	tests := []struct {
		start                   string
		method, target, version string // method "": an error
	}{
		{"GET /x HTTP/1.1", "GET", "/x", "HTTP/1.1"},
		{"POST /ts/mcp?a=b&c HTTP/1.0", "POST", "/ts/mcp?a=b&c", "HTTP/1.0"},
		{"OPTIONS * HTTP/1.1", "OPTIONS", "*", "HTTP/1.1"},
		{"M-SEARCH http://h/p HTTP/1.1", "M-SEARCH", "http://h/p", "HTTP/1.1"},
		{"GET  /x HTTP/1.1", "", "", ""},
		{" GET /x HTTP/1.1", "", "", ""},
		{"GET /x", "", "", ""},
		{"GET /x ", "", "", ""},
		{"GET", "", "", ""},
		{"", "", "", ""},
		{"GET /x HTTP/2.0", "", "", ""},
		{"GET /x HTTP/1.10", "", "", ""},
		{"GET /x HTTP/1.a", "", "", ""},
		{"GET /x HTTP/1.1 extra", "", "", ""},
		{"GET /x http/1.1", "", "", ""},
		{"G(T /x HTTP/1.1", "", "", ""},
		{"GET /x\x7f HTTP/1.1", "", "", ""},
		{"GET /\x00 HTTP/1.1", "", "", ""},
		{"GET /x\ty HTTP/1.1", "", "", ""},
	}
	for _, tc := range tests {
		h := Head{Start: []byte(tc.start)}
		m, tg, v, err := h.RequestLine()
		var he *HeadError
		switch {
		case tc.method == "" && !errors.As(err, &he):
			t.Errorf("%q: %q %q %q, %v; want a *HeadError", tc.start, m, tg, v, err)
		case tc.method != "" && (err != nil || string(m) != tc.method || string(tg) != tc.target || string(v) != tc.version):
			t.Errorf("%q: %q %q %q, %v; want %q %q %q", tc.start, m, tg, v, err, tc.method, tc.target, tc.version)
		}
	}
}

func TestEqualFold(t *testing.T) {
	tests := []struct {
		b, s string
		want bool
	}{
		{"Content-Length", "content-length", true},
		{"CONTENT-LENGTH", "Content-Length", true},
		{"x-mcptun-", "X-Mcptun-", true},
		{"", "", true},
		{"Host", "Hos", false},
		{"Hos", "Host", false},
		{"Content-Lengtx", "Content-Length", false},
		{"Content\rLength", "Content-Length", false}, // '\r'|0x20 == '-'
		{"@", "`", false},
		{"[", "{", false},
		{"_", "\x7f", false},
		{"\xc1", "\xe1", false},
	}
	for _, tc := range tests {
		if got := EqualFold([]byte(tc.b), tc.s); got != tc.want {
			t.Errorf("EqualFold(%q, %q) = %v", tc.b, tc.s, got)
		}
	}
	// Every pair of bytes: equal, or the same ASCII letter in two cases.
	lower := func(c byte) byte {
		if c >= 'A' && c <= 'Z' {
			return c + 'a' - 'A'
		}
		return c
	}
	for c := 0; c < 256; c++ {
		for d := 0; d < 256; d++ {
			want := lower(byte(c)) == lower(byte(d))
			if got := EqualFold([]byte{byte(c)}, string([]byte{byte(d)})); got != want {
				t.Fatalf("EqualFold(%q, %q) = %v", byte(c), byte(d), got)
			}
		}
	}
}

func TestIsHopByHop(t *testing.T) {
	for _, n := range []string{"Connection", "proxy-connection", "KEEP-ALIVE", "Proxy-Authenticate", "Proxy-Authorization",
		"TE", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length"} {
		if !IsHopByHop([]byte(n)) {
			t.Errorf("%s is hop-by-hop", n)
		}
	}
	for _, n := range []string{"Content-Type", "Authorization", "Mcp-Session-Id", "Trailers", "Host", ""} {
		if IsHopByHop([]byte(n)) {
			t.Errorf("%s is end-to-end", n)
		}
	}
}

func FuzzReadHead(f *testing.F) {
	for _, s := range []string{
		"POST /ts/mcp HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n" +
			"Mcp-Session-Id: 2f9c\r\nMcp-Protocol-Version: 2025-11-25\r\nContent-Length: 52\r\n\r\n" +
			`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`,
		"GET /notes/mcp?tenant=a HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: text/event-stream\r\nLast-Event-ID: 17\r\nAuthorization: Bearer t\r\n\r\n",
		"DELETE /ts/mcp HTTP/1.1\r\nHost: h\r\nMcp-Session-Id: s\r\nConnection: close\r\n\r\n",
		"POST /up/mcp HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-Mcptun-Client: alice\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /up/mcp HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n{}",
		"POST /up/mcp HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"POST / HTTP/1.1\nHost: h\nContent-Length:  007 \n\n",
		"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
		// Classic desync probes: leading zeros, the same length spelled
		// twice, odd whitespace around framing values.
		"POST /ts/mcp HTTP/1.1\r\nHost: h\r\nContent-Length: 0010\r\n\r\n0123456789",
		"POST /ts/mcp HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\nhello",
		"POST /ts/mcp HTTP/1.1\r\nHost: h\r\nContent-Length:\t3\t\r\n\r\nabc",
		"POST /ts/mcp HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \tchunked\r\n\r\n0\r\n\r\n",
		"\r\n\r\nGET / HTTP/1.1\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\n X-Folded: 2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// headBuffered promises that ReadHead needs no byte beyond those
		// buffered (the fast path then sets no header deadline).
		fill := bufio.NewReader(bytes.NewReader(data))
		_, _ = fill.Peek(1)
		if headBuffered(fill) {
			got, _ := fill.Peek(fill.Buffered())
			var h Head
			if err := ReadHead(bufio.NewReader(bytes.NewReader(got)), &h); errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("headBuffered(%q), but ReadHead wants more: %v", got, err)
			}
		}

		var h Head
		br := bufio.NewReader(bytes.NewReader(data))
		err := ReadHead(br, &h)

		// The buffer size must not change the outcome.
		var small Head
		err2 := ReadHead(bufio.NewReaderSize(bytes.NewReader(data), 16), &small)
		if (err == nil) != (err2 == nil) || err == nil && (!bytes.Equal(h.Raw, small.Raw) || h.ContentLength != small.ContentLength ||
			h.Chunked != small.Chunked || h.OtherEncoding != small.OtherEncoding || len(h.Fields) != len(small.Fields)) {
			t.Fatalf("16-byte reader disagrees: %v / %v", err, err2)
		}
		if err != nil {
			return
		}
		checkHead(t, &h, data, br)

		req, rerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if rerr != nil {
			return
		}
		if req.Body != nil {
			defer req.Body.Close()
		}
		httpChunked := len(req.TransferEncoding) > 0 && req.TransferEncoding[0] == "chunked"
		if h.Chunked || httpChunked {
			return
		}
		// Both read the head and neither frames the body as chunked: they
		// must agree on its length, or one of them could be led to read
		// the next request out of this one's body.
		if h.ContentLength >= 0 {
			if req.ContentLength != h.ContentLength {
				t.Fatalf("Content-Length %d, net/http says %d", h.ContentLength, req.ContentLength)
			}
			return
		}
		// No Content-Length here: net/http reports a request without one
		// as 0, having seen none either.
		if req.ContentLength != 0 || req.Header["Content-Length"] != nil {
			t.Fatalf("no Content-Length, net/http says %d (%q)", req.ContentLength, req.Header["Content-Length"])
		}
	})
}

// checkHead checks what must hold for any head ReadHead accepts.
func checkHead(t *testing.T, h *Head, data []byte, br *bufio.Reader) {
	t.Helper()
	if len(h.Raw) == 0 || len(h.Raw) > MaxHeadBytes || !bytes.HasPrefix(h.Raw, h.Start) {
		t.Fatalf("Raw %q, Start %q", h.Raw, h.Start)
	}
	// What was consumed is empty lines, Raw and the blank line.
	rest, _ := io.ReadAll(br)
	consumed := data[:len(data)-len(rest)]
	if !bytes.Equal(rest, data[len(consumed):]) {
		t.Fatal("the rest is not what follows the head")
	}
	pre, ok := bytes.CutSuffix(consumed, []byte("\n"))
	pre = bytes.TrimSuffix(pre, []byte("\r"))
	pre, ok2 := bytes.CutSuffix(pre, h.Raw)
	if !ok || !ok2 || len(bytes.ReplaceAll(bytes.ReplaceAll(pre, []byte("\r\n"), nil), []byte("\n"), nil)) > 0 {
		t.Fatalf("consumed %q, Raw %q", consumed, h.Raw)
	}
	prev := len(h.Start)
	for _, f := range h.Fields {
		if !(prev < f.lineStart && f.lineStart < f.nameEnd && f.nameEnd < f.valueStart &&
			f.valueStart <= f.valueEnd && f.valueEnd < f.lineEnd && f.lineEnd <= len(h.Raw)) {
			t.Fatalf("field %+v out of Raw (%d bytes)", f, len(h.Raw))
		}
		prev = f.lineEnd - 1
		if h.Raw[f.nameEnd] != ':' || h.Raw[f.lineEnd-1] != '\n' {
			t.Fatalf("line %q", h.Line(f))
		}
		if bytes.ContainsAny(h.Name(f), ": \t\r\n\x00") {
			t.Fatalf("name %q", h.Name(f))
		}
		v := h.Value(f)
		if bytes.ContainsAny(v, "\r\n\x00") {
			t.Fatalf("value %q", v)
		}
		if len(v) > 0 && (v[0] == ' ' || v[0] == '\t' || v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
			t.Fatalf("value %q not trimmed", v)
		}
	}
	if h.Chunked && h.OtherEncoding || (h.Chunked || h.OtherEncoding) && h.ContentLength >= 0 || h.ContentLength < -1 {
		t.Fatalf("framing: Chunked %v OtherEncoding %v ContentLength %d", h.Chunked, h.OtherEncoding, h.ContentLength)
	}
}

func TestParseLength(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"52", 52, true},
		{"007", 7, true},
		{"9223372036854775807", 9223372036854775807, true},
		{"9223372036854775808", 0, false}, // one past int64
		{"99999999999999999999", 0, false},
		{"", 0, false},
		{"+1", 0, false},
		{"-0", 0, false},
		{" 1", 0, false},
		{"1 ", 0, false},
		{"0x10", 0, false},
		{"1_000", 0, false},
	} {
		n, ok := parseLength([]byte(tc.in))
		if n != tc.want || ok != tc.ok {
			t.Errorf("parseLength(%q) = %d, %v; want %d, %v", tc.in, n, ok, tc.want, tc.ok)
		}
	}
}
