package benchmatrix

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// A minimal Streamable HTTP MCP client for what loadgen does not do: idle
// sessions, held GET streams, and a bulk transfer whose bytes are counted
// as they arrive.

const clientVersion = "2025-11-25"

type mcpClient struct {
	hc    *http.Client
	url   string
	token string
}

type mcpSession struct {
	ID      string
	Version string
}

func (c *mcpClient) newRequest(ctx context.Context, method string, body []byte, s mcpSession) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url, rd)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if s.ID != "" {
		req.Header.Set("Mcp-Session-Id", s.ID)
	}
	if s.Version != "" {
		req.Header.Set("Mcp-Protocol-Version", s.Version)
	}
	return req, nil
}

// initialize opens a session: initialize, then notifications/initialized.
func (c *mcpClient) initialize(ctx context.Context) (mcpSession, error) {
	body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + clientVersion +
		`","capabilities":{},"clientInfo":{"name":"mcptun-benchmatrix","version":"1"}}}`
	req, err := c.newRequest(ctx, http.MethodPost, []byte(body), mcpSession{})
	if err != nil {
		return mcpSession{}, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return mcpSession{}, fmt.Errorf("initialize: %w", err)
	}
	msg, err := readAnswer(resp)
	if err != nil {
		return mcpSession{}, fmt.Errorf("initialize: %w", err)
	}
	var init struct {
		Result struct {
			ProtocolVersion string `json:"protocolVersion"`
		} `json:"result"`
	}
	if err := json.Unmarshal(msg, &init); err != nil || init.Result.ProtocolVersion == "" {
		return mcpSession{}, fmt.Errorf("initialize: no protocolVersion in %.200s", msg)
	}
	s := mcpSession{ID: resp.Header.Get("Mcp-Session-Id"), Version: init.Result.ProtocolVersion}
	if s.ID == "" {
		return s, fmt.Errorf("initialize: no Mcp-Session-Id in the answer")
	}
	req, err = c.newRequest(ctx, http.MethodPost, []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`), s)
	if err != nil {
		return s, err
	}
	resp, err = c.hc.Do(req)
	if err != nil {
		return s, fmt.Errorf("notifications/initialized: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return s, fmt.Errorf("notifications/initialized: HTTP %s", resp.Status)
	}
	return s, nil
}

// end deletes a session.
func (c *mcpClient) end(ctx context.Context, s mcpSession) {
	req, err := c.newRequest(ctx, http.MethodDelete, nil, s)
	if err != nil {
		return
	}
	if resp, err := c.hc.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}
}

// readAnswer returns the first JSON-RPC message of a 200 answer, JSON or
// SSE, and closes the body.
func readAnswer(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, 1<<20)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(body, 300))
		return nil, fmt.Errorf("HTTP %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return io.ReadAll(body)
	}
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 4096), 1<<20)
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			if len(bytes.TrimSpace(data)) > 0 {
				return data, nil
			}
			data = data[:0]
			continue
		}
		if v, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			data = append(data, bytes.TrimPrefix(v, []byte(" "))...)
		}
	}
	if len(bytes.TrimSpace(data)) > 0 {
		return data, nil
	}
	return nil, fmt.Errorf("event stream ended without a message (%v)", sc.Err())
}

// callCounting calls tool and reads the answer, adding every body byte to
// n as it arrives; it fails unless the answer is a complete 200.
func (c *mcpClient) callCounting(ctx context.Context, s mcpSession, id int, tool string, args []byte, n *atomic.Int64) error {
	body := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":%q,"arguments":%s}}`, id, tool, args)
	req, err := c.newRequest(ctx, http.MethodPost, body, s)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("tools/call %s: %w", tool, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("tools/call %s: HTTP %s", tool, resp.Status)
	}
	buf := make([]byte, 64<<10)
	for {
		k, err := resp.Body.Read(buf)
		n.Add(int64(k))
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("tools/call %s: read: %w", tool, err)
		}
	}
}

// heldStream is an open GET stream of a session, held without reading, as
// an idle client holds it. It is plain HTTP/1.1 on a TCP connection so
// that holding ten thousand costs this process no goroutines.
type heldStream struct {
	conn net.Conn
	br   *bufio.Reader
}

func (h *heldStream) Close() error { return h.conn.Close() }

// startStream sends the GET that opens the standalone stream of s; the
// answer is read by readHeader.
func (c *mcpClient) startStream(ctx context.Context, s mcpSession) (*heldStream, error) {
	u, err := url.Parse(c.url)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("open stream: %s: only http:// is supported", c.url)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nMcp-Session-Id: %s\r\nMcp-Protocol-Version: %s\r\n",
		u.RequestURI(), u.Host, s.ID, s.Version)
	if c.token != "" {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", c.token)
	}
	b.WriteString("\r\n")
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, b.String()); err != nil {
		conn.Close()
		return nil, fmt.Errorf("open stream: %w", err)
	}
	_ = conn.SetWriteDeadline(time.Time{})
	return &heldStream{conn: conn, br: bufio.NewReaderSize(conn, 1024)}, nil
}

// readHeader waits until deadline for the stream's response header and
// checks it is a 200 event stream. A timeout before any byte arrived
// leaves the stream usable for another try.
func (h *heldStream) readHeader(deadline time.Time) error {
	_ = h.conn.SetReadDeadline(deadline)
	defer h.conn.SetReadDeadline(time.Time{})
	if _, err := h.br.Peek(1); err != nil {
		return err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return fmt.Errorf("open stream: HTTP %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	return nil
}

// broadcast calls the fixture's broadcast_list_changed tool on a session
// of its own, which sends an event on every session's GET stream.
func (c *mcpClient) broadcast(ctx context.Context) error {
	s, err := c.initialize(ctx)
	if err != nil {
		return err
	}
	defer c.end(ctx, s)
	var n atomic.Int64
	return c.callCounting(ctx, s, 2, "broadcast_list_changed", []byte("{}"), &n)
}
