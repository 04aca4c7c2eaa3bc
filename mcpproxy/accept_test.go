package mcpproxy

import (
	"mime"
	"net/http"
	"testing"
)

func TestPrefersSSE(t *testing.T) {
	tests := []struct {
		accept  []string // nil: no Accept header
		sse, ok bool     // prefersSSE, and acceptsAny(json, sse)
	}{
		{nil, false, true},
		{[]string{"application/json, text/event-stream"}, false, true},
		{[]string{"text/event-stream, application/json"}, true, true},
		{[]string{"text/event-stream", "application/json"}, true, true},
		{[]string{"application/json;q=0.5, text/event-stream"}, true, true},
		{[]string{"text/event-stream;q=0.9, application/json"}, false, true},
		{[]string{"text/event-stream"}, true, true},
		{[]string{"application/json"}, false, true},
		{[]string{"*/*"}, false, true},
		{[]string{"*/*, text/event-stream"}, true, true},
		{[]string{"text/*, application/json"}, false, true},
		{[]string{"application/json;q=0, text/event-stream"}, true, true},
		{[]string{"text/html"}, false, false},
		{[]string{"application/json;q=0, text/event-stream;q=0"}, false, false},
		{[]string{"garbage;;;, text/event-stream"}, true, true},
	}
	for _, tt := range tests {
		r, _ := http.NewRequest(http.MethodPost, "http://x/", nil)
		for _, v := range tt.accept {
			r.Header.Add("Accept", v)
		}
		if got := prefersSSE(r); got != tt.sse {
			t.Errorf("Accept %q: prefersSSE = %v, want %v", tt.accept, got, tt.sse)
		}
		if got := acceptsAny(r, "application/json", "text/event-stream"); got != tt.ok {
			t.Errorf("Accept %q: acceptsAny = %v, want %v", tt.accept, got, tt.ok)
		}
	}
}

// bareMediaType agrees with mime.ParseMediaType wherever it answers: same
// media type, no parameters.
func TestBareMediaType(t *testing.T) {
	for _, tc := range []struct {
		in   string
		bare bool
	}{
		{"application/json", true},
		{"Text/Event-Stream", true},
		{"*/*", true},
		{"application/*", true},
		{"application/vnd.api+json", true},
		{"application/json; charset=utf-8", false},
		{"application/json;q=0.9", false},
		{"application", false},
		{"/json", false},
		{"application/", false},
		{"a/b/c", false},
		{"a b/c", false},
		{"a/b\x00", false},
		{"appl\u00e9/json", false},
		{"", false},
	} {
		if _, ok := bareMediaType(tc.in); ok != tc.bare {
			t.Errorf("bareMediaType(%q) ok = %v, want %v", tc.in, ok, tc.bare)
			continue
		}
		checkBareAgrees(t, tc.in)
	}
}

func checkBareAgrees(t *testing.T, v string) {
	t.Helper()
	got, ok := bareMediaType(v)
	if !ok {
		return
	}
	want, params, err := mime.ParseMediaType(v)
	if err != nil || got != want || len(params) != 0 {
		t.Fatalf("bareMediaType(%q) = %q; mime.ParseMediaType: %q %v %v", v, got, want, params, err)
	}
}

func FuzzBareMediaType(f *testing.F) {
	for _, s := range []string{"application/json", "text/event-stream", "*/*", "a/b;q=1", "a//b", "x/y z"} {
		f.Add(s)
	}
	f.Fuzz(checkBareAgrees)
}
