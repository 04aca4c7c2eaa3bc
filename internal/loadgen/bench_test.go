package loadgen

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// trivialMCP is the cheapest handler that still speaks the sessions era
// correctly, so that benchmarks measure the generator rather than a server.
type trivialMCP struct{ pool sync.Pool }

var idKey = []byte(`"id":`)

func (h *trivialMCP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.WriteHeader(http.StatusOK)
		return
	}
	buf, _ := h.pool.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	defer h.pool.Put(buf)
	buf.Reset()
	_, _ = buf.ReadFrom(r.Body)
	body := buf.Bytes()
	i := bytes.Index(body, idKey)
	if i < 0 {
		w.WriteHeader(http.StatusAccepted) // a notification
		return
	}
	id := body[i+len(idKey):]
	if j := bytes.IndexByte(id, ','); j >= 0 {
		id = id[:j]
	}
	hdr := w.Header()
	hdr["Content-Type"] = []string{"application/json"}
	var out []byte
	if bytes.Contains(body, []byte(`"method":"initialize"`)) {
		hdr["Mcp-Session-Id"] = []string{"bench"}
		out = append(out, `{"jsonrpc":"2.0","id":`...)
		out = append(out, id...)
		out = append(out, `,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"t","version":"1"}}}`...)
	} else {
		out = append(out, `{"jsonrpc":"2.0","id":`...)
		out = append(out, id...)
		out = append(out, `,"result":{"content":[{"type":"text","text":"ok"}]}}`...)
	}
	_, _ = w.Write(out)
}

func benchRun(b *testing.B, cfg Config) {
	b.Helper()
	cfg.Requests = b.N
	b.ReportAllocs()
	b.ResetTimer()
	res, err := Run(b.Context(), cfg)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if res.Errors != 0 || res.Requests != int64(b.N) {
		b.Fatalf("%d requests, %d errors: %v", res.Requests, res.Errors, res.ErrorSamples)
	}
}

// BenchmarkLoopback is one closed-loop session against a trivial handler
// over real loopback HTTP: generator, net/http on both sides and the kernel.
func BenchmarkLoopback(b *testing.B) {
	srv := httptest.NewServer(&trivialMCP{})
	defer srv.Close()
	benchRun(b, Config{URL: srv.URL})
}

// inProcess serves requests by calling the handler directly, leaving out
// the network and net/http's transport: what remains is the generator's own
// per-request work (plus the trivial handler and a recorder).
type inProcess struct{ h http.Handler }

func (p inProcess) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	p.h.ServeHTTP(rec, r)
	if r.Body != nil {
		_ = r.Body.Close()
	}
	resp := rec.Result()
	resp.Body = io.NopCloser(bytes.NewReader(rec.Body.Bytes()))
	return resp, nil
}

func BenchmarkGeneratorOverhead(b *testing.B) {
	benchRun(b, Config{URL: "http://127.0.0.1:1/mcp", HTTPClient: &http.Client{Transport: inProcess{&trivialMCP{}}}})
}
