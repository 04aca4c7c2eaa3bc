package mcpproxy

import "testing"

// BenchmarkPeek measures classifying one message without decoding it, as
// the bridge does for every client and child message.
// Run: go test -run '^$' -bench Peek ./mcpproxy
func BenchmarkPeek(b *testing.B) {
	for _, tc := range []struct{ name, msg string }{
		{"tools-call", `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"},"_meta":{"progressToken":"p-1"}}}`},
		{"response", `{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}`},
		{"progress", `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p-1","progress":50,"total":100}}`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			data := []byte(tc.msg)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Peek(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
