package mcpproxy

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mcptun/mcptun/internal/glob"
)

var fuzzPolicy = newPolicy("s", Policy{
	Tools:     Rules{Deny: []string{"drop*"}},
	Prompts:   Rules{Allow: []string{"p?"}},
	Resources: Rules{Deny: []string{"file:///secret/*"}},
}, nil, slog.New(slog.DiscardHandler))

// deniedLeft returns a denied entry of out's list results, if any,
// decoding out with encoding/json (as a client would) rather than with
// the code under test.
func deniedLeft(out []byte) string {
	var msgs []map[string]json.RawMessage
	if bytes.HasPrefix(bytes.TrimSpace(out), []byte("[")) {
		_ = json.Unmarshal(out, &msgs)
	} else {
		var m map[string]json.RawMessage
		if json.Unmarshal(out, &m) == nil {
			msgs = append(msgs, m)
		}
	}
	for _, m := range msgs {
		var res map[string][]map[string]any
		_ = json.Unmarshal(m["result"], &res)
		for _, x := range []struct{ list, key, kind string }{
			{"tools", "name", "tool"}, {"prompts", "name", "prompt"}, {"resources", "uri", "resource"},
		} {
			for _, e := range res[x.list] {
				n, _ := e[x.key].(string)
				switch {
				case x.kind == "tool" && glob.Match("drop*", n),
					x.kind == "prompt" && !glob.Match("p?", n),
					x.kind == "resource" && glob.Match("file:///secret/*", n):
					return x.kind + " " + n
				}
			}
		}
	}
	return ""
}

// FuzzFilterList: for any message, filterList never panics, what it
// passes is valid JSON when its input was, and no denied entry survives
// in a list result as a JSON decoder reads it.
func FuzzFilterList(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"drop_x"},{"name":"ok"}],"nextCursor":"a"}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok","name":"drop"}]}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"tools":[{"Name":"drop","name":"ok"}]},"result":{}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"px"},{"name":"q"}],"resources":[{"uri":"file:///secret/a"}]}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"dr\u006fp"}]}}`,
		`{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}`,
	} {
		f.Add([]byte(s), uint8(0))
	}
	f.Fuzz(func(t *testing.T, msg []byte, kind uint8) {
		v := view{p: fuzzPolicy, server: "s"}
		out := v.filterList(msg, ListKind(kind%5))
		if validJSON(msg) && !validJSON(out) {
			t.Fatalf("valid input %q became invalid %q", msg, out)
		}
		if kind%5 == uint8(ListNone) {
			if d := deniedLeft(out); d != "" {
				t.Fatalf("denied %s left in %q (from %q)", d, out, msg)
			}
		}
	})
}

// FuzzListWriterSSE: an SSE answer cut into arbitrary pieces comes out as
// the same events, with list results filtered, whatever the cuts.
func FuzzListWriterSSE(f *testing.F) {
	f.Add([]byte("data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"drop\"},{\"name\":\"ok\"}]}}\r\n\r\n"), uint16(7))
	f.Add([]byte("id: 1\ndata: [{\"jsonrpc\":\"2.0\",\"id\":1,\n\"result\":{\"tools\":[{\"name\":\"drop\"}]}}]\n\n: keepalive\n\n"), uint16(3))
	f.Add([]byte("data: x\r\rdata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"drop\"}]}}\r\r"), uint16(1))
	f.Fuzz(func(t *testing.T, stream []byte, cut uint16) {
		run := func(step int) string {
			rec := httptest.NewRecorder()
			rec.Header().Set("Content-Type", "text/event-stream")
			lw := &listWriter{w: rec, v: view{p: fuzzPolicy, server: "s"}, lists: map[string]ListKind{"1": ListTools}, max: 1 << 20}
			lw.WriteHeader(200)
			for i := 0; i < len(stream); i += step {
				if _, err := lw.Write(stream[i:min(i+step, len(stream))]); err != nil {
					t.Fatal(err)
				}
			}
			lw.finish()
			return rec.Body.String()
		}
		whole := run(max(len(stream), 1))
		pieces := run(int(cut%64) + 1)
		if whole != pieces {
			t.Fatalf("cut into pieces of %d: %q, whole: %q", cut%64+1, pieces, whole)
		}
		for _, ev := range strings.Split(strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(whole), "\n\n") {
			var data []string
			for _, l := range strings.Split(ev, "\n") {
				if d, ok := strings.CutPrefix(l, "data:"); ok {
					data = append(data, strings.TrimPrefix(d, " "))
				}
			}
			if d := deniedLeft([]byte(strings.Join(data, "\n"))); strings.HasPrefix(d, "tool") {
				t.Fatalf("denied %s left in event %q of %q", d, ev, whole)
			}
		}
	})
}
