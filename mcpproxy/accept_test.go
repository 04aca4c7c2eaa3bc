package mcpproxy

import (
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
