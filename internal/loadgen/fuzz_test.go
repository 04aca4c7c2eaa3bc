package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"
)

// FuzzReadSSE feeds arbitrary event streams, as an untrusted server might,
// to the SSE reader: it must return a response or an error, never panic.
func FuzzReadSSE(f *testing.F) {
	for _, seed := range []string{
		"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n",
		"id: 1\ndata:\n\n: c\n\ndata: {\"id\":7,\r\ndata: \"result\":{\"isError\":true}}\r\n\r\n",
		"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"x\"}\n\ndata: {\"id\":7,\"error\":{\"code\":1,\"message\":\"m\"}}",
		"data: [1,2]\n\n",
		"data",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		s := newSession(&runner{plan: &plan{cfg: Config{Tool: "echo"}}})
		s.startDeadline(context.Background(), time.Minute)
		defer s.dropDeadline()
		s.cnt = countingReader{r: bytes.NewReader(stream)}
		msg, err := s.readSSE("tools/call", 7)
		if err == nil && msg == nil {
			t.Fatal("no response and no error")
		}
		if s.cnt.n > len(stream) {
			t.Fatalf("counted %d bytes of %d", s.cnt.n, len(stream))
		}
	})
}

// FuzzScanAnswer checks the answer scanner on arbitrary input and, where
// encoding/json reads the input as an object, that both agree.
func FuzzScanAnswer(f *testing.F) {
	for _, seed := range []string{
		`{"jsonrpc":"2.0","id":7,"result":{"isError":false}}`,
		`{"id":7,"error":{"code":-1,"message":"x"}}`,
		`{"id":"7","result":{"content":[{"type":"text","text":"a\"b\\"}],"isError":true}}`,
		`{"id":7}`,
		`null`,
		`{"id":7,"result":null, "method": "x"}`,
		` { "id" : 7 , "result" : [ ] } `,
		`{"id":7,"result":{}}x`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		a, err := scanAnswer(msg)
		s := newSession(&runner{plan: &plan{}})
		_, _ = s.decode("tools/call", msg, 7)
		_ = toolErrorText(msg)
		if a.result != nil {
			_ = resultIsError(a.result)
		}

		// encoding/json matches keys case-insensitively and decodes
		// escapes in keys; compare only where neither can matter.
		if bytes.ContainsAny(msg, `\ABCDEFGHIJKLMNOPQRSTUVWXYZ`) {
			return
		}
		var ref struct {
			ID     json.RawMessage  `json:"id"`
			Method *json.RawMessage `json:"method"`
			Result *json.RawMessage `json:"result"`
			Error  *json.RawMessage `json:"error"`
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(msg, &obj) != nil || obj == nil || json.Unmarshal(msg, &ref) != nil {
			return
		}
		if err != nil {
			t.Fatalf("valid object %q rejected: %v", msg, err)
		}
		if !bytes.Equal(a.id, ref.ID) {
			t.Fatalf("id %q, encoding/json %q", a.id, ref.ID)
		}
		if (a.result != nil) != (ref.Result != nil) || (a.result != nil && !bytes.Equal(a.result, *ref.Result)) {
			t.Fatalf("result %q, encoding/json %v", a.result, ref.Result)
		}
		if (a.errObj != nil) != (ref.Error != nil) {
			t.Fatalf("error %q, encoding/json %v", a.errObj, ref.Error)
		}
		var method string
		if ref.Method != nil {
			_ = json.Unmarshal(*ref.Method, &method)
		}
		if a.isMethod != (method != "") {
			t.Fatalf("isMethod %v, encoding/json method %q", a.isMethod, method)
		}
		if a.result != nil {
			var r struct {
				IsError json.RawMessage `json:"isError"`
			}
			if json.Unmarshal(a.result, &r) == nil && (string(r.IsError) == "true") != resultIsError(a.result) {
				t.Fatalf("isError disagrees on %q", a.result)
			}
		}
	})
}
