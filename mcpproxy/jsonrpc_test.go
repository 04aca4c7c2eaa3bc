package mcpproxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestPeek(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		kind   Kind
		method string
		id     string
		token  string
		tool   string
		cancel string
		sub    string
		err    error
	}{
		{name: "request", in: `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, kind: KindRequest, method: "tools/list", id: "1"},
		{name: "big id kept exact", in: `{"jsonrpc":"2.0","id":9007199254740993,"method":"ping"}`, kind: KindRequest, method: "ping", id: "9007199254740993"},
		{name: "string id with escapes", in: `{"id":"a\"b\u00e9","jsonrpc":"2.0","method":"ping"}`, kind: KindRequest, method: "ping", id: `"a\"b\u00e9"`},
		{name: "pretty printed", in: "{\n  \"jsonrpc\": \"2.0\",\n  \"id\" : 7 ,\n  \"method\": \"x\"\n}", kind: KindRequest, method: "x", id: "7"},
		{name: "tools/call", in: `{"jsonrpc":"2.0","id":"r1","method":"tools/call","params":{"name":"echo","arguments":{"name":"not this"},"_meta":{"progressToken":"tok","x":[1,{"progressToken":2}]}}}`,
			kind: KindRequest, method: "tools/call", id: `"r1"`, token: `"tok"`, tool: "echo"},
		{name: "numeric token", in: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":12345678901234567890},"name":"a\u0062"}}`,
			kind: KindRequest, method: "tools/call", id: "1", token: "12345678901234567890", tool: "ab"},
		{name: "name only for tools/call", in: `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}`, kind: KindRequest, method: "prompts/get", id: "1"},
		{name: "notification", in: `{"jsonrpc":"2.0","method":"notifications/initialized"}`, kind: KindNotification, method: "notifications/initialized"},
		{name: "progress notification", in: `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}`,
			kind: KindNotification, method: "notifications/progress", token: `"t"`},
		{name: "cancelled", in: `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9007199254740993,"reason":"x"}}`,
			kind: KindNotification, method: "notifications/cancelled", cancel: "9007199254740993"},
		{name: "subscription notification", in: `{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":9007199254740993}}}`,
			kind: KindNotification, method: "notifications/tools/list_changed", sub: "9007199254740993"},
		{name: "subscription id only on notifications", in: `{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":1}}}`,
			kind: KindRequest, method: "x", id: "1"},
		{name: "progress with _meta", in: `{"jsonrpc":"2.0","method":"notifications/progress","params":{"_meta":{"progressToken":"no"},"progressToken":"t"}}`,
			kind: KindNotification, method: "notifications/progress", token: `"t"`},
		{name: "response", in: `{"jsonrpc":"2.0","id":"x","result":{"unknown":[1,2,{"a":"}"}]}}`, kind: KindResponse, id: `"x"`},
		{name: "error", in: `{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}`, kind: KindError, id: "3"},
		{name: "error null id", in: `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}`, kind: KindError, id: "null"},
		{name: "unknown members kept", in: `{"jsonrpc":"2.0","id":1,"method":"m","extra":{"Method":"x"},"params":[1]}`, kind: KindRequest, method: "m", id: "1"},

		{name: "invalid json", in: `{"jsonrpc":"2.0",`, err: ErrParse},
		{name: "trailing garbage", in: `{"jsonrpc":"2.0","method":"m"} x`, err: ErrParse},
		{name: "raw newline in string", in: "{\"jsonrpc\":\"2.0\",\"method\":\"a\nb\"}", err: ErrParse},
		{name: "empty", in: ``, err: ErrParse},
		{name: "batch", in: `[{"jsonrpc":"2.0","method":"m"}]`, err: ErrBatch},
		{name: "not an object", in: `"hello"`, err: ErrInvalidMessage},
		{name: "no jsonrpc", in: `{"id":1,"method":"m"}`, err: ErrInvalidMessage},
		{name: "wrong jsonrpc", in: `{"jsonrpc":"1.0","id":1,"method":"m"}`, err: ErrInvalidMessage},
		{name: "method not string", in: `{"jsonrpc":"2.0","id":1,"method":5}`, err: ErrInvalidMessage},
		{name: "null request id", in: `{"jsonrpc":"2.0","id":null,"method":"m"}`, err: ErrInvalidMessage},
		{name: "object id", in: `{"jsonrpc":"2.0","id":{},"result":{}}`, err: ErrInvalidMessage},
		{name: "result and error", in: `{"jsonrpc":"2.0","id":1,"result":{},"error":{}}`, err: ErrInvalidMessage},
		{name: "method and result", in: `{"jsonrpc":"2.0","id":1,"method":"m","result":{}}`, err: ErrInvalidMessage},
		{name: "nothing", in: `{"jsonrpc":"2.0"}`, err: ErrInvalidMessage},
		{name: "id only", in: `{"jsonrpc":"2.0","id":1}`, err: ErrInvalidMessage},
		{name: "duplicate method", in: `{"jsonrpc":"2.0","method":"tools/list","method":"tools/call","id":1}`, err: ErrInvalidMessage},
		{name: "case variant", in: `{"jsonrpc":"2.0","method":"tools/list","Method":"tools/call","id":1}`, err: ErrInvalidMessage},
		{name: "escaped case variant", in: `{"jsonrpc":"2.0","method":"a","\u004Dethod":"b","id":1}`, err: ErrInvalidMessage},
		{name: "duplicate subscription id", in: `{"jsonrpc":"2.0","method":"n","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":1,"io.modelcontextprotocol/subscriptionId":2}}}`, err: ErrInvalidMessage},
		{name: "duplicate tool name", in: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}`, err: ErrInvalidMessage},
		{name: "params scalar", in: `{"jsonrpc":"2.0","id":1,"method":"m","params":3}`, err: ErrInvalidMessage},
		{name: "error not object", in: `{"jsonrpc":"2.0","id":1,"error":"x"}`, err: ErrInvalidMessage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Peek([]byte(tt.in))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Peek error = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Peek: %v", err)
			}
			if m.Kind != tt.kind || m.Method != tt.method || string(m.ID) != tt.id ||
				string(m.ProgressToken) != tt.token || m.ToolName != tt.tool || string(m.CancelledID) != tt.cancel ||
				string(m.SubscriptionID) != tt.sub {
				t.Errorf("Peek = kind %v method %q id %q token %q tool %q cancel %q sub %q; want %v %q %q %q %q %q %q",
					m.Kind, m.Method, m.ID, m.ProgressToken, m.ToolName, m.CancelledID, m.SubscriptionID,
					tt.kind, tt.method, tt.id, tt.token, tt.tool, tt.cancel, tt.sub)
			}
		})
	}
}

func TestWithID(t *testing.T) {
	in := []byte(`{"jsonrpc":"2.0", "id" : 9007199254740993 ,"method":"m","params":{"x":1.000000000000000000001}}`)
	m, err := Peek(in)
	if err != nil {
		t.Fatal(err)
	}
	out := rewrite(in, m.idEdit([]byte("17")))
	want := `{"jsonrpc":"2.0", "id" : 17 ,"method":"m","params":{"x":1.000000000000000000001}}`
	if string(out) != want {
		t.Fatalf("idEdit = %s\nwant     %s", out, want)
	}
	c := []byte(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"abc"}}`)
	m, err = Peek(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(rewrite(c, m.cancelEdit([]byte("4")))); got != `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":4}}` {
		t.Fatalf("cancelEdit = %s", got)
	}
	n := []byte(`{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":3}}}`)
	if m, err = Peek(n); err != nil {
		t.Fatal(err)
	}
	if got := string(rewrite(n, m.subscriptionEdit([]byte(`"client-7"`)))); got != `{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"client-7"}}}` {
		t.Fatalf("subscriptionEdit = %s", got)
	}
	r := []byte(`{"jsonrpc":"2.0","id":3,"result":{"content":{"_meta":{"io.modelcontextprotocol/subscriptionId":3}},"_meta":{"x":1,"io.modelcontextprotocol/subscriptionId":3}}}`)
	if m, err = Peek(r); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.resultSubscriptionEdit(r, []byte("4"), []byte("9")); ok {
		t.Fatal("resultSubscriptionEdit matched a different id")
	}
	e, ok := m.resultSubscriptionEdit(r, []byte("3"), []byte("9007199254740993"))
	if !ok {
		t.Fatal("resultSubscriptionEdit found nothing")
	}
	wantR := `{"jsonrpc":"2.0","id":3,"result":{"content":{"_meta":{"io.modelcontextprotocol/subscriptionId":3}},"_meta":{"x":1,"io.modelcontextprotocol/subscriptionId":9007199254740993}}}`
	if got := string(rewrite(r, e)); got != wantR {
		t.Fatalf("resultSubscriptionEdit = %s\nwant %s", got, wantR)
	}
}

func TestPeekIDPrefix(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"jsonrpc":"2.0","id":42,"result":{"content":[{"text":"xxxx`, "42"},
		{`{"result":{"a":"b"},"id":"s","jsonrpc"`, `"s"`},
		{`{"jsonrpc":"2.0","result":{"content":"xx`, ""},
		{`{"id":4`, ""}, // may be cut off: 4 could be 42
		{`{"id":{"x":1},`, ""},
		{`[`, ""},
		{``, ""},
	}
	for _, tt := range tests {
		if got := peekIDPrefix([]byte(tt.in)); string(got) != tt.want {
			t.Errorf("peekIDPrefix(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzPeek(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":"t"}}}`,
		`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9007199254740993}}`,
		`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":2}}`,
		`{"jsonrpc":"2.0","id":"x","result":{}}`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}`,
		`{"jsonrpc":"2.0","method":"n","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"s"}}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"_meta":{"io.modelcontextprotocol/subscriptionId":1}}}`,
		`[1,2]`, `{"a":"\u0041\\"}`, `{`, `"`, `{"jsonrpc":"2.0","\u006dethod":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Peek(data)
		valid := json.Valid(data)
		if valid == errors.Is(err, ErrParse) {
			t.Fatalf("Peek error %v disagrees with json.Valid = %v", err, valid)
		}
		_ = peekIDPrefix(data)
		if len(data) > 1 {
			_ = peekIDPrefix(data[:len(data)/2])
		}
		if err != nil {
			return
		}
		// What Peek found must be what encoding/json finds.
		var env struct {
			ID     json.RawMessage `json:"id"`
			Method *string         `json:"method"`
		}
		if err := json.Unmarshal(data, &env); err != nil {
			t.Fatalf("Peek accepted what encoding/json rejects: %v", err)
		}
		if m.ID != nil && !bytes.Equal(m.ID, env.ID) {
			t.Fatalf("id %q, encoding/json says %q", m.ID, env.ID)
		}
		if env.Method != nil && *env.Method != m.Method {
			t.Fatalf("method %q, encoding/json says %q", m.Method, *env.Method)
		}
		if m.ID != nil {
			edits := []edit{m.idEdit([]byte(`"r"`))}
			if m.ProgressToken != nil {
				edits = append(edits, m.tokenEdit([]byte("7")))
			}
			out := rewrite(data, edits...)
			if !json.Valid(out) {
				t.Fatalf("rewrite made invalid JSON: %s", out)
			}
			if m2, err := Peek(out); err != nil || string(m2.ID) != `"r"` || m2.Kind != m.Kind ||
				(m.ProgressToken != nil && string(m2.ProgressToken) != "7") {
				t.Fatalf("re-peek after rewrite: %v %+v", err, m2)
			}
		}
		if m.CancelledID != nil && !json.Valid(rewrite(data, m.cancelEdit([]byte("1")))) {
			t.Fatalf("cancelEdit made invalid JSON")
		}
		if m.SubscriptionID != nil && !json.Valid(rewrite(data, m.subscriptionEdit([]byte(`"s"`)))) {
			t.Fatalf("subscriptionEdit made invalid JSON")
		}
		if m.Kind == KindResponse {
			if e, ok := m.resultSubscriptionEdit(data, []byte("1"), []byte(`"s"`)); ok && !json.Valid(rewrite(data, e)) {
				t.Fatalf("resultSubscriptionEdit made invalid JSON")
			}
		}
	})
}

// memberSet holds at most maxWanted keys: every list members is given fits.
func TestWantedKeysFit(t *testing.T) {
	for _, want := range [][]string{topKeys, paramsKeys, metaKeys, errorKeys, resultKeys} {
		if len(want) > maxWanted {
			t.Errorf("%v: %d keys, memberSet holds %d", want, len(want), maxWanted)
		}
	}
}

func TestFoldEqual(t *testing.T) {
	for _, tc := range []struct {
		b, w string
		want bool
	}{
		{"method", "method", true},
		{"Method", "method", true},
		{"METHOD", "method", true},
		{"methods", "method", false},
		{"_meta", "_meta", true},
		{"_META", "_meta", true},
		{"\x7fmeta", "_meta", false}, // not letters: no folding
		{"requestid", "requestId", true},
		{"\u212Aey", "key", true},           // KELVIN SIGN folds to k, as in encoding/json
		{"progre\u017Fs", "progress", true}, // LATIN SMALL LETTER LONG S folds to s
		{"n\u00e4me", "name", false},
	} {
		if got := foldEqual([]byte(tc.b), tc.w); got != tc.want || got != strings.EqualFold(tc.b, tc.w) {
			t.Errorf("foldEqual(%q, %q) = %v, want %v (strings.EqualFold agrees)", tc.b, tc.w, got, tc.want)
		}
	}
}
