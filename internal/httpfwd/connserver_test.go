package httpfwd

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func waitHead(t *testing.T, ctx context.Context, c net.Conn, h *Head, idle, header time.Duration) error {
	cs := newConnState(ctx, c, idle, header)
	defer cs.close()
	defer cs.releaseReader()
	return cs.waitHead(h)
}

// TestWaitHeadTimeouts: an idle connection ends after idle; a head that
// began must be complete within headerTimeout, however long idle is; a head
// already buffered is read at once.
func TestWaitHeadTimeouts(t *testing.T) {
	pair := func(t *testing.T) (server, client net.Conn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		client, err = net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		server, err = ln.Accept()
		require.NoError(t, err)
		t.Cleanup(func() { server.Close(); client.Close() })
		return server, client
	}
	t.Run("idle", func(t *testing.T) {
		s, _ := pair(t)
		var h Head
		err := waitHead(t, context.Background(), s, &h, 50*time.Millisecond, time.Hour)
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	})
	t.Run("slow head", func(t *testing.T) {
		s, c := pair(t)
		_, err := c.Write([]byte("POST /a/mcp HTTP/1.1\r\nHost: x\r\n"))
		require.NoError(t, err)
		var h Head
		start := time.Now()
		err = waitHead(t, context.Background(), s, &h, time.Hour, 50*time.Millisecond)
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
		require.Less(t, time.Since(start), time.Hour/2, "the idle limit did not apply once the head began")
	})
	t.Run("complete head", func(t *testing.T) {
		s, c := pair(t)
		_, err := c.Write([]byte("GET /a/mcp HTTP/1.1\r\nHost: x\r\n\r\nGET /b/mcp HTTP/1.1\r\nHost: x\r\n\r\n"))
		require.NoError(t, err)
		var h Head
		cs := newConnState(context.Background(), s, time.Hour, time.Hour)
		defer cs.close()
		defer cs.releaseReader()
		for _, want := range []string{"GET /a/mcp HTTP/1.1", "GET /b/mcp HTTP/1.1"} {
			require.NoError(t, cs.waitHead(&h))
			require.Equal(t, want, string(h.Start))
		}
	})
	t.Run("shutting down", func(t *testing.T) {
		s, _ := pair(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var h Head
		err := waitHead(t, ctx, s, &h, time.Hour, time.Hour)
		require.True(t, errors.Is(err, context.Canceled), "got %v", err)
	})
}
