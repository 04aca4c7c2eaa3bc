package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestTokenGuessingThrottled: wrong bearer tokens sent as fast as a
// keep-alive connection allows used to be checked without limit (16,818 a
// second) and logged nowhere. Now a source gets its allowance (10 at once,
// 1 a second after that), then 429 auth_throttled with Retry-After without
// its token being looked at, and the relay logs the failures once per
// source and minute, without the token.
func TestTokenGuessingThrottled(t *testing.T) {
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic"})
	d.waitOnline(t, "notes")
	const guess = "guess-0123456789-abcdef"
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	send := func(token string) (int, string, http.Header) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.relayURL+"/dc1/notes/mcp",
			strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		var e struct {
			Error struct {
				Data struct{ Reason string } `json:"data"`
			} `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return resp.StatusCode, e.Error.Data.Reason, resp.Header
	}

	const window = 2 * time.Second
	checked, throttled := 0, 0
	var retryAfter string
	for start := time.Now(); time.Since(start) < window; {
		switch code, reason, hdr := send(guess); {
		case code == http.StatusUnauthorized && reason == "unauthorized":
			checked++
		case code == http.StatusTooManyRequests && reason == "auth_throttled":
			throttled++
			retryAfter = hdr.Get("Retry-After")
		default:
			t.Fatalf("a wrong token got %d %q", code, reason)
		}
	}
	t.Logf("in %s: %d wrong tokens checked, %d refused unchecked", window, checked, throttled)
	// 10 at once and 1 a second: at most 13 in 2 s, whatever the speed.
	require.LessOrEqual(t, checked, 13)
	require.GreaterOrEqual(t, checked, 10)
	require.Positive(t, throttled)
	require.NotEmpty(t, retryAfter, "429 without Retry-After")

	// The source waits whatever it sends, a right token too. (Right after
	// a refusal; the allowance refills once a second, so one may land in
	// between: a few tries.)
	refusedRight := false
	for try := 0; try < 3 && !refusedRight; try++ {
		if code, _, _ := send(guess); code != http.StatusTooManyRequests {
			continue
		}
		code, reason, _ := send(clientToken)
		refusedRight = code == http.StatusTooManyRequests && reason == "auth_throttled"
	}
	require.True(t, refusedRight, "a right token from a throttled address went through")

	line := regexp.MustCompile(`level=WARN msg="authentication failed" .*what="bearer token" source=127\.0\.0\.1/32 failures=1 `)
	d.relay.waitLine(t, line, 5*time.Second)
	require.Equal(t, 1, countLines(d.relay, regexp.MustCompile(`msg="authentication failed"`)), "one line per source and minute")
	require.NotContains(t, d.relay.out.String(), guess, "the relay logged the token")
}
