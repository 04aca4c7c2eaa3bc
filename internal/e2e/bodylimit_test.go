package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestBodyOverLimitThroughTunnel: a message over the agent's 64 MiB limit
// for a stdio server gets 413 body_too_large from the agent, passed on by
// the relay (it was 502: the relay, still sending, took the agent's closed
// stream for a failed exchange). QUIC and TCP.
func TestBodyOverLimitThroughTunnel(t *testing.T) {
	const size = 80 << 20
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			d := deploy(t, relayOpts{}, agentOpts{transport: transport})
			d.waitOnline(t, "notes")
			// A JSON string of size bytes, made as it is sent.
			body := io.MultiReader(strings.NewReader(`{"x":"`), io.LimitReader(repeatReader('a'), size-8), strings.NewReader(`"}`))
			req, err := http.NewRequest(http.MethodPost, d.relayURL+"/dc1/notes/mcp", body)
			require.NoError(t, err)
			req.ContentLength = size
			req.Header.Set("Authorization", "Bearer "+clientToken)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, string(b))
			var e struct {
				Error struct {
					Data struct {
						Reason string `json:"reason"`
					} `json:"data"`
				} `json:"error"`
			}
			require.NoError(t, json.Unmarshal(b, &e), string(b))
			require.Equal(t, "body_too_large", e.Error.Data.Reason)
		})
	}
}

// repeatReader reads an endless run of one byte.
type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	copy(p, bytes.Repeat([]byte{byte(r)}, len(p)))
	return len(p), nil
}
