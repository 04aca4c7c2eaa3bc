package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"time"
)

// alpnHTTP1 is offered by the tunnel's TCP listener only to recognise an
// HTTPS client that dialed the tunnel port instead of the relay's HTTP
// address.
const alpnHTTP1 = "http/1.1"

// reasonTunnelPort is the error.data.reason of the answer an HTTP client at
// the tunnel port gets.
const reasonTunnelPort = "tunnel_port"

const wrongPortMessage = "this is the mcptun relay's tunnel port, where agents connect; MCP clients use the relay's HTTP address (http.listen in relay.yaml), at /{agent}/{server}/mcp"

// looksLikeHTTP reports whether the first bytes of a connection are an
// HTTP/1 method, i.e. a plain-HTTP client at the (TLS) tunnel port.
func looksLikeHTTP(b []byte) bool {
	for _, m := range []string{"GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ", "PATCH "} {
		n := min(len(m), len(b))
		if string(b[:n]) == m[:n] {
			return true
		}
	}
	return false
}

// answerWrongPort tells an HTTP client at the tunnel port where to go: one
// 421 answer with the JSON-RPC shaped body every refusal carries, then the
// connection closes. Over TLS the request head is read first (a client
// that gets an answer before it sent its request discards it); in plain
// text the TLS record reader already took the request's first packet.
// What the client sends afterwards is read (bounded) before the close, so
// it reads the answer rather than a reset.
func (s *Server) answerWrongPort(ctx context.Context, c net.Conn, readHead bool) {
	defer c.Close()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(DefaultHandshakeTimeout)
	}
	_ = c.SetDeadline(dl)
	if readHead {
		br := bufio.NewReaderSize(io.LimitReader(c, 16<<10), 4096)
		for {
			line, err := br.ReadSlice('\n')
			if err != nil || len(bytes.TrimSpace(line)) == 0 {
				break
			}
		}
	}
	body, _ := json.Marshal(map[string]any{
		"jsonrpc": "2.0", "id": nil,
		"error": map[string]any{"code": -32000, "message": wrongPortMessage, "data": map[string]any{"reason": reasonTunnelPort}},
	})
	body = append(body, '\n')
	_, _ = fmt.Fprintf(c, "HTTP/1.1 421 Misdirected Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	s.log.Info("tunnel: an HTTP client dialed the tunnel port; told it to use the relay's HTTP address (http.listen)", "remote", c.RemoteAddr())
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20))
}
