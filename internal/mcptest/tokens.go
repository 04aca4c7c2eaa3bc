package mcptest

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
)

// mcp-go decodes a request's _meta.progressToken into an `any`, so an integer
// token above 2^53 becomes a rounded float64, and progress notifications
// would carry a token the client never sent. The fixture must echo tokens
// exactly (a tunnel that rounds them is a bug the tests must be able to see),
// so its transports keep the raw token text where the tool can find it:
//
//   - over HTTP each POST carries one message, so the middleware puts the raw
//     body in the request context (rawMessageKey);
//   - over stdio the line reader records, per decoded value, the
//     raw text of every numeric token that does not survive a float64 round
//     trip (tokenTableKey). Two concurrent calls whose different tokens round
//     to the same float64 would share an entry; nothing else is ambiguous.

type rawMessageKey struct{}

type tokenTableKey struct{}

// maxRecordedTokens bounds the stdio table: entries are taken when the tool
// runs, so only calls that never reach test_tool_with_progress leave one.
const maxRecordedTokens = 1024

type tokenTable struct {
	mu sync.Mutex
	m  map[float64]json.RawMessage
}

// rawProgressToken returns the token to put in progress notifications: the
// client's raw JSON text when the transport recorded it, else decoded.
func rawProgressToken(ctx context.Context, decoded any) any {
	if body, ok := ctx.Value(rawMessageKey{}).([]byte); ok {
		if raw := progressTokenOf(body); raw != nil {
			return raw
		}
	}
	if t, ok := ctx.Value(tokenTableKey{}).(*tokenTable); ok {
		if f, ok := decoded.(float64); ok {
			if raw := t.take(f); raw != nil {
				return raw
			}
		}
	}
	return decoded
}

// progressTokenOf returns params._meta.progressToken of a JSON-RPC message,
// as raw JSON, or nil.
func progressTokenOf(msg []byte) json.RawMessage {
	var m struct {
		Params struct {
			Meta struct {
				ProgressToken json.RawMessage `json:"progressToken"`
			} `json:"_meta"`
		} `json:"params"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		return nil
	}
	tok := bytes.TrimSpace(m.Params.Meta.ProgressToken)
	if len(tok) == 0 || bytes.Equal(tok, []byte("null")) {
		return nil
	}
	return json.RawMessage(tok)
}

// observe records the token of msg if it is a number that float64 rounds.
func (t *tokenTable) observe(msg []byte) {
	if !bytes.Contains(msg, []byte(`"progressToken"`)) {
		return
	}
	raw := progressTokenOf(msg)
	if len(raw) == 0 || raw[0] == '"' {
		return
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		return
	}
	back, err := json.Marshal(f)
	if err != nil || bytes.Equal(back, raw) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil || len(t.m) >= maxRecordedTokens {
		t.m = make(map[float64]json.RawMessage)
	}
	t.m[f] = raw
}

func (t *tokenTable) take(f float64) json.RawMessage {
	t.mu.Lock()
	defer t.mu.Unlock()
	raw, ok := t.m[f]
	if ok {
		delete(t.m, f)
	}
	return raw
}
