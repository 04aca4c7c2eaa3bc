package mcpproxy

import (
	"encoding/json"
	"strings"
	"testing"
)

// validJSONCases are inputs at each edge of the grammar; TestValidJSON
// checks validJSON against json.Valid on every one, and they seed
// FuzzValidJSON.
var validJSONCases = []string{
	"", " ", "\t\r\n", "1", " 1 ", "-0", "-", "--1", "01", "0.", "0.5", ".5", "1e5", "1E+5", "1e-5",
	"1e", "1e+", "1.5e3", "-1.5E-3", "1ee5", "0x10", "+1", "1.2.3", "1 2",
	"true", "false", "null", "tru", "nul", "truex", "True", "NULL", "true false",
	`""`, `"a"`, `"\""`, `"\\"`, `"\/"`, `"\b\f\n\r\t"`, `"\u0041"`, `"\u00e9\uD83D\uDE00"`,
	`"\u004"`, `"\u004G"`, `"\x41"`, `"\'"`, `"a`, `"\`, "\"\x00\"", "\"\x1f\"", "\"\x7f\"",
	"\"\xff\xfe\"", "\"é\"", `"a"b`,
	"{}", "[]", "{ }", "[ ]", "{", "[", "}", "]", "{]", "[}", "{}}", "[]]", "[[]", "{{}}",
	`{"a":1}`, `{"a":1,}`, `{"a":1,"b":[true,false,null]}`, `{"a"}`, `{"a":}`, `{a:1}`, `{1:1}`,
	`{"a" : 1 , "b" : 2}`, `{"a":1 "b":2}`, `[1,]`, `[,1]`, `[1,,2]`, `[1 2]`, `[1,2]`,
	`[{"a":[{"b":{}}]}]`, `{"a":[1,{"b":2}],"c":"d"}`, `{"a":1}x`, `[1]]`, `{"a":{"b":1}}}`,
	"\xef\xbb\xbf{}", "{}\x00", "\x00", "[\"a\",\"b\"]", `{"\u0000":"\u0000"}`,
	`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`,
}

func TestValidJSON(t *testing.T) {
	for _, in := range validJSONCases {
		if got, want := validJSON([]byte(in)), json.Valid([]byte(in)); got != want {
			t.Errorf("validJSON(%q) = %v, json.Valid says %v", in, got, want)
		}
	}
}

// The nesting limit is encoding/json's: 10,000 open containers pass,
// 10,001 do not, and the bit stack outgrows its fixed part correctly.
func TestValidJSONNesting(t *testing.T) {
	for _, depth := range []int{1, 63, 64, 65, 255, 256, 257, 1000, maxNesting, maxNesting + 1} {
		for _, open := range []string{"[", `{"k":`} {
			close := "]"
			if open != "[" {
				close = "}"
			}
			// Alternate kinds so a wrong bit shows up as a mismatched closer.
			var b strings.Builder
			for i := range depth {
				if i%2 == 0 {
					b.WriteString(open)
				} else {
					b.WriteString("[")
				}
			}
			b.WriteString("1")
			for i := depth - 1; i >= 0; i-- {
				if i%2 == 0 {
					b.WriteString(close)
				} else {
					b.WriteString("]")
				}
			}
			in := []byte(b.String())
			if got, want := validJSON(in), json.Valid(in); got != want {
				t.Errorf("depth %d (%s): validJSON = %v, json.Valid says %v", depth, open, got, want)
			}
			if depth > 1 {
				swapped := []byte(b.String())
				swapped[len(swapped)-1] ^= ']' ^ '}' // the outermost closer of the wrong kind
				if validJSON(swapped) || json.Valid(swapped) {
					t.Errorf("depth %d (%s): a mismatched outermost closer passed", depth, open)
				}
			}
		}
	}
}

func FuzzValidJSON(f *testing.F) {
	for _, s := range validJSONCases {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := validJSON(data), json.Valid(data); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid says %v", data, got, want)
		}
	})
}

// BenchmarkValidJSON compares validJSON with json.Valid on the messages
// BenchmarkPeek peeks.
// Run: go test -run '^$' -bench ValidJSON ./mcpproxy
func BenchmarkValidJSON(b *testing.B) {
	msgs := map[string]string{
		"tools-call": `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"},"_meta":{"progressToken":"p-1"}}}`,
		"result-4k":  `{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"` + strings.Repeat(`lorem ipsum \"dolor\" sit amet `, 128) + `"}],"isError":false}}`,
	}
	for name, msg := range msgs {
		data := []byte(msg)
		for _, impl := range []struct {
			name  string
			valid func([]byte) bool
		}{{"ours", validJSON}, {"encoding-json", json.Valid}} {
			b.Run(name+"/"+impl.name, func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					if !impl.valid(data) {
						b.Fatal("invalid")
					}
				}
			})
		}
	}
}
