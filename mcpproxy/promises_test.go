//go:build unix

package mcpproxy

import (
	"encoding/hex"
	"math/bits"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// Tests of promises the README makes about the agent's bridge that no
// other test pins.

// "Mcp-Session-Id is 128 random bits": the ids the bridge hands out are 32
// lower-case hex digits, and over many ids every one of the 128 bits takes
// both values about equally often (a counter, a clock or a short random
// part padded out fails that), with no id repeated.
func TestSessionIDIs128RandomBits(t *testing.T) {
	format := regexp.MustCompile(`^[0-9a-f]{32}$`)
	b := newBridge(t, Options{})
	for range 3 {
		sid := b.initialize(t)
		if !format.MatchString(sid) {
			t.Fatalf("session id %q is not 32 lower-case hex digits", sid)
		}
		b.status(t, http.MethodDelete, sid, "")
	}

	const n = 4096
	var ones [128]int
	seen := make(map[string]bool, n)
	for range n {
		id := newSessionID()
		if !format.MatchString(id) {
			t.Fatalf("session id %q is not 32 lower-case hex digits", id)
		}
		if seen[id] {
			t.Fatalf("session id %s repeated within %d", id, n)
		}
		seen[id] = true
		raw, _ := hex.DecodeString(id)
		for i, c := range raw {
			for j := range 8 {
				ones[i*8+j] += int(c>>j) & 1
			}
		}
	}
	// Each bit is a fair coin: n/2 ones, σ = √n/2 = 32. Outside ±6σ for
	// any of 128 bits happens by chance about once in 10^7 runs.
	const slack = 6 * 32
	for i, c := range ones {
		if c < n/2-slack || c > n/2+slack {
			t.Errorf("bit %d of the session id is 1 in %d of %d ids: not random", i, c, n)
		}
	}
	// And the ids differ from each other in about half their bits.
	var prev [16]byte
	total := 0
	k := 0
	for id := range seen {
		raw, _ := hex.DecodeString(id)
		var cur [16]byte
		copy(cur[:], raw)
		if k > 0 {
			for i := range cur {
				total += bits.OnesCount8(cur[i] ^ prev[i])
			}
		}
		prev = cur
		k++
	}
	if avg := float64(total) / float64(k-1); avg < 60 || avg > 68 {
		t.Errorf("ids differ in %.1f of 128 bits on average, want about 64", avg)
	}
}

// "Stateless streams are not resumable": an answer streamed in the
// 2026-07-28 era cannot be picked up again with Last-Event-ID, by POST
// (400 saying so) or by GET (405: the era has no GET), and nothing of it
// is replayed.
func TestStatelessStreamsNotResumable(t *testing.T) {
	b := newBridge(t, Options{})
	call := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"once"}}}`
	hdr := []string{"Mcp-Protocol-Version", "2026-07-28", "Mcp-Method", "tools/call", "Mcp-Name", "echo",
		"Accept", "text/event-stream, application/json"}
	resp := b.do(t, http.MethodPost, "", call, hdr...)
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "text/event-stream" {
		t.Fatalf("stateless call: %d %s %s", resp.StatusCode, ct, readBody(t, resp))
	}
	sr := newSSEReader(resp.Body)
	ev := sr.nextData(t)
	resp.Body.Close()
	if !strings.Contains(ev.data, `"once"`) {
		t.Fatalf("answer %+v", ev)
	}
	lastID := ev.id
	if lastID == "" {
		lastID = "0.1" // what a client would try
	}

	status, body := b.status(t, http.MethodPost, "", call, append(hdr, "Last-Event-ID", lastID)...)
	if status != http.StatusBadRequest || !strings.Contains(body, "streams are not resumable") || strings.Contains(body, `"once"`) {
		t.Errorf("POST resuming a stateless stream: %d %s, want 400 saying streams are not resumable", status, body)
	}
	status, body = b.status(t, http.MethodGet, "", "", "Mcp-Protocol-Version", "2026-07-28", "Last-Event-ID", lastID)
	if status != http.StatusMethodNotAllowed || strings.Contains(body, `"once"`) {
		t.Errorf("GET resuming a stateless stream: %d %s, want 405", status, body)
	}
}

// "An exchange refused for any other reason takes nothing from an
// allowance": requests the bridge refuses (foreign Origin, unsupported
// version, unknown session, no such method) leave a server's rate limit
// untouched, so the one request the limit allows still passes after them.
func TestRefusalsTakeNothingFromServerRateLimit(t *testing.T) {
	// One request per 1,000 s, a burst of one: the allowance is exactly
	// one request for the whole test.
	b := newBridge(t, Options{}, ServerConfig{Name: "lim", Command: []string{testServerBin}, Rate: 0.001, Burst: 1})
	url := b.srv.URL + "/lim/mcp"
	send := func(method, body string, hdr ...string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := b.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, readBody(t, resp)
	}
	for _, r := range []struct {
		name, method, body string
		hdr                []string
		status             int
	}{
		{"foreign origin", http.MethodPost, initBody, []string{"Origin", "https://evil.example"}, http.StatusForbidden},
		{"unsupported version", http.MethodPost, `{"jsonrpc":"2.0","id":1,"method":"ping"}`, []string{"Mcp-Protocol-Version", "1999-01-01"}, http.StatusBadRequest},
		{"unknown session", http.MethodPost, `{"jsonrpc":"2.0","id":1,"method":"ping"}`, []string{"Mcp-Session-Id", "00000000000000000000000000000000", "Mcp-Protocol-Version", "2025-11-25"}, http.StatusNotFound},
		{"method not allowed", http.MethodPut, `{}`, nil, http.StatusMethodNotAllowed},
	} {
		if status, body := send(r.method, r.body, r.hdr...); status != r.status {
			t.Fatalf("%s: %d %s, want %d", r.name, status, body, r.status)
		}
	}
	if status, body := send(http.MethodPost, initBody); status != http.StatusOK {
		t.Fatalf("the one allowed request after the refusals: %d %s; the refusals took the allowance", status, body)
	}
	if status, body := send(http.MethodPost, initBody); status != http.StatusTooManyRequests {
		t.Fatalf("the request after the allowed one: %d %s, want 429", status, body)
	}
}
