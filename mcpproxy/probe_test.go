package mcpproxy

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestProbeUpstream: the status probe of a url: server connects the way
// exchanges do, so upstream_networks holds for it too, and it sends no
// request.
func TestProbeUpstream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	got := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := c.Read(make([]byte, 1))
		got <- n
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	url := "http://localhost:" + port + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	h, err := NewHandler([]ServerConfig{{Name: "wiki", URL: url}}, Options{})
	require.NoError(t, err)
	defer h.Close()
	require.NoError(t, h.ProbeUpstream(ctx, "wiki"))
	require.Equal(t, 0, <-got, "the probe sent bytes")
	require.NoError(t, h.ProbeUpstream(ctx, "nosuch"), "not a url: server")

	fenced, err := NewHandler([]ServerConfig{{Name: "wiki", URL: url}}, Options{UpstreamNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	require.NoError(t, err)
	defer fenced.Close()
	err = fenced.ProbeUpstream(ctx, "wiki")
	require.ErrorContains(t, err, "upstream_networks")
}
