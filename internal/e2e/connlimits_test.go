package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"
)

// deployLimited is deploy with the relay started under a descriptor limit
// (prlimit) when nofile > 0.
func deployLimited(t *testing.T, nofile int, ro relayOpts, ao agentOpts) *deployment {
	t.Helper()
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, ro)
	if nofile > 0 {
		prlimit, err := exec.LookPath("prlimit")
		if err != nil {
			t.Skip("prlimit (util-linux) is not installed")
		}
		d.relay = startProc(t, "relay", nil, prlimit, fmt.Sprintf("--nofile=%d:%d", nofile, nofile), "--",
			mcptunBin, "relay", "--config", d.relayYAML)
		m := d.relay.waitLine(t, relayStarted, 20*time.Second)
		d.tunnelAddr, d.relayURL = m[1], m[2]
	} else {
		d.startRelay(t)
	}
	d.writeAgentConfig(t, ao)
	d.startAgent(t)
	d.waitOnline(t, "notes")
	return d
}

// openFDs counts a process's open descriptors.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join("/proc", fmt.Sprint(pid), "fd"))
	require.NoError(t, err)
	return len(ents)
}

// dialMany opens n connections to addr that send nothing; they are closed
// at cleanup or by the returned release.
func dialMany(t *testing.T, addr string, n int) (conns []net.Conn, release func()) {
	t.Helper()
	for range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	release = func() {
		for _, c := range conns {
			c.Close()
		}
	}
	t.Cleanup(release)
	return conns, release
}

// TestRelaySurvivesDescriptorFlood: 400 idle connections against a relay
// limited to 300 descriptors used to stop its listener for good (accept4:
// too many open files) with the process still up. Now accept errors back
// off, idle connections end after http.header_timeout, and once the flood
// is released calls work again.
func TestRelaySurvivesDescriptorFlood(t *testing.T) {
	d := deployLimited(t, 300, relayOpts{http: "header_timeout: 2s"}, agentOpts{transport: "quic"})
	notes, _ := newClient(t, d.relayURL+"/dc1/notes/mcp", clientToken)
	callEcho(t, notes, 10*time.Second, "before")

	_, release := dialMany(t, strings.TrimPrefix(d.relayURL, "http://"), 400)
	// Old and new alike log the failed accept; only the new go on.
	d.relay.waitLine(t, regexp.MustCompile(`accept4: too many open files`), 20*time.Second)
	release()

	// A new client (new connection) is served again.
	serveAgain(t, d, 20*time.Second)
	require.False(t, d.relay.hasLine(regexp.MustCompile(`msg="listener stopped"`)), "the listener stopped")
}

// TestRelayCutsIdleAndHalfSent: connections that send nothing end after
// http.header_timeout, and requests whose body stalls get 408 body_timeout
// after http.body_timeout, on the fast path (Content-Length) and on
// net/http's (chunked); the descriptors they held come back.
func TestRelayCutsIdleAndHalfSent(t *testing.T) {
	d := deployLimited(t, 0, relayOpts{http: "header_timeout: 2s, body_timeout: 2s"}, agentOpts{transport: "quic"})
	pid := d.relay.cmd.Process.Pid
	addr := strings.TrimPrefix(d.relayURL, "http://")
	base := openFDs(t, pid)

	idle, _ := dialMany(t, addr, 50)
	var half []net.Conn
	for i := range 100 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		if i%2 == 0 {
			fmt.Fprintf(c, "POST /dc1/notes/mcp HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"+
				"Content-Length: 1000\r\n\r\n{\"jsonrpc\":", clientToken)
		} else {
			fmt.Fprintf(c, "POST /dc1/notes/mcp HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"+
				"Transfer-Encoding: chunked\r\n\r\n3e8\r\n{\"jsonrpc\":", clientToken)
		}
		half = append(half, c)
	}
	peak := 0
	require.Eventually(t, func() bool { peak = max(peak, openFDs(t, pid)); return peak >= base+140 }, 10*time.Second, 20*time.Millisecond,
		"the relay did not take the 150 connections: %d descriptors at the start, %d at most", base, peak)
	start := time.Now()

	for i, c := range half {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
		resp, err := http.ReadResponse(bufioReader(c), nil)
		require.NoError(t, err, "half-sent request %d got no answer", i)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusRequestTimeout, resp.StatusCode, "request %d: %s %v", i, body, resp.Header)
		var e struct {
			Error struct {
				Data struct{ Reason string } `json:"data"`
			} `json:"error"`
		}
		require.NoError(t, json.Unmarshal(body, &e), string(body))
		require.Equal(t, "body_timeout", e.Error.Data.Reason)
	}
	require.GreaterOrEqual(t, time.Since(start), time.Second, "cut long before body_timeout")
	for i, c := range idle {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
		n, err := c.Read(make([]byte, 1))
		require.Equal(t, 0, n, "idle connection %d got bytes", i)
		require.ErrorIs(t, err, io.EOF, "idle connection %d was not closed by the relay", i)
	}
	// What they held comes back (a little slack for the agent's pooled
	// streams and the like).
	require.Eventually(t, func() bool { return openFDs(t, pid) <= base+5 }, 10*time.Second, 20*time.Millisecond,
		"descriptors: %d at the start", base)
	t.Logf("relay descriptors: %d at the start, %d with 50 idle and 100 half-sent requests, %d after", base, peak, openFDs(t, pid))
	require.True(t, d.relay.hasLine(regexp.MustCompile(`msg="client cut" .*reason=body_timeout`)), "no log line for the stalled bodies")
}

// TestRelayMaxConnections: connections over http.max_connections are
// answered 503 too_many_connections (and counted, see the log line) and
// served again once others close.
func TestRelayMaxConnections(t *testing.T) {
	d := deployLimited(t, 0, relayOpts{http: "max_connections: 20"}, agentOpts{transport: "quic"})
	addr := strings.TrimPrefix(d.relayURL, "http://")
	// Hold 20 connections the relay served (a connection of the harness
	// may still be closing: until it is, one of ours may be refused).
	var held []net.Conn
	release := func() {
		for _, c := range held {
			c.Close()
		}
	}
	t.Cleanup(release)
	for tries := 0; len(held) < 20; tries++ {
		require.Less(t, tries, 40, "could not open 20 served connections")
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		require.NoError(t, err)
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
		br := bufioReader(c)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			c.Close()
			continue
		}
		require.NoError(t, c.SetDeadline(time.Time{}))
		held = append(held, c)
	}
	for i := range 5 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		require.NoError(t, err)
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
		resp, err := http.ReadResponse(bufioReader(c), nil)
		require.NoError(t, err, "refused connection %d", i)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.Close()
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "connection %d: %s", i, body)
		require.Contains(t, string(body), `"reason":"too_many_connections"`)
	}
	d.relay.waitLine(t, regexp.MustCompile(`msg="too many client connections; refusing new ones".* max_connections=20`), 5*time.Second)
	release()
	// Served again once the relay has seen them go (it learns of each
	// close by reading it).
	serveAgain(t, d, 10*time.Second)
}

// serveAgain waits until a new client, on connections of its own, is
// served an MCP call.
func serveAgain(t *testing.T, d *deployment, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		hc := &http.Client{Transport: &http.Transport{}}
		c, err := newClientErr(hc, d.relayURL+"/dc1/notes/mcp", clientToken)
		if err == nil {
			callEcho(t, c, 10*time.Second, "after")
			_ = c.Close()
			hc.CloseIdleConnections()
			return
		}
		hc.CloseIdleConnections()
		require.True(t, time.Now().Before(deadline), "no client served within %s: %v", within, err)
		<-tick.C
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// newClientErr is newClient for a relay that may not answer: initialize
// must succeed within 5 s, on connections of its own (a pooled one of
// another client would not tell whether the relay accepts new ones).
func newClientErr(hc *http.Client, url, token string) (*client.Client, error) {
	tr, err := transport.NewStreamableHTTP(url, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + token}),
		transport.WithHTTPBasicClient(hc))
	if err != nil {
		return nil, err
	}
	c := client.NewClient(tr, client.WithProtocolVersion(mcp.LATEST_LEGACY_PROTOCOL_VERSION))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	init := mcp.InitializeRequest{}
	init.Params.ClientInfo = mcp.Implementation{Name: "e2e", Version: "1"}
	init.Params.ProtocolVersion = mcp.LATEST_LEGACY_PROTOCOL_VERSION
	if _, err := c.Initialize(ctx, init); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}
