package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/devcert"
)

func startListener(t *testing.T, secret []byte) (*Listener, *syncBuf) {
	t.Helper()
	log, buf := testLogger()
	l, err := Listen(LinkConfig{Relay: "listener", Secret: secret, Logger: log}, "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l, buf
}

// A link with the same secret on both ends carries bytes; a wrong secret
// is refused with ErrBadSecret, and the listener never hands the
// connection on.
func TestLinkAuth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, llog := startListener(t, testSecret)
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()

	bad, err := NewDialer(LinkConfig{Relay: "intruder", Secret: bytes.Repeat([]byte("z"), MinSecretLen)})
	require.NoError(t, err)
	_, err = bad.Dial(ctx, l.Addr().String())
	require.ErrorIs(t, err, ErrBadSecret)
	require.Eventually(t, func() bool { return strings.Contains(llog.String(), "refused a relay-to-relay link") }, 5*time.Second, 10*time.Millisecond)
	require.NotContains(t, llog.String(), string(testSecret), "the secret is never logged")

	good, err := NewDialer(LinkConfig{Relay: "peer", Secret: testSecret})
	require.NoError(t, err)
	c, err := good.Dial(ctx, l.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	var sc net.Conn
	select {
	case sc = <-accepted:
	case <-ctx.Done():
		t.Fatal("the authenticated link was not accepted")
	}
	defer sc.Close()
	_, err = c.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(sc, buf)
	require.NoError(t, err)
	require.Equal(t, "ping", string(buf))
	// The refused dial was never accepted: the first link accepted is
	// the good one (it carried "ping").
	l.Close()
	for c := range accepted {
		c.Close()
		t.Fatal("a second link was accepted")
	}
}

// A listener that does not know the secret cannot pose as a relay: the
// dialer checks its mac too (a welcome with a made-up mac fails), so
// client requests never go to an impostor the registry pointed at.
func TestLinkImpostorListener(t *testing.T) {
	cert, _, err := devcert.Certificate("localhost")
	require.NoError(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpn}})
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := readFrame(c); err != nil {
			return
		}
		_ = writeFrame(c, frame{Type: typeWelcome, Version: ProtocolVersion, Relay: "impostor", MAC: strings.Repeat("ab", 32)})
		_, _ = io.Copy(io.Discard, c)
	}()
	d, err := NewDialer(LinkConfig{Relay: "peer", Secret: testSecret})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = d.Dial(ctx, ln.Addr().String())
	require.ErrorIs(t, err, ErrBadSecret)
	ln.Close()
	<-done
}

func TestLinkConfigErrors(t *testing.T) {
	_, err := NewDialer(LinkConfig{Relay: "a", Secret: []byte("short")})
	require.ErrorContains(t, err, "at least 32")
	_, err = Listen(LinkConfig{Secret: testSecret}, "127.0.0.1:0")
	require.ErrorContains(t, err, "no relay id")
}

func TestDecodeFrame(t *testing.T) {
	mac := strings.Repeat("0f", 32)
	for _, tt := range []struct {
		name, in, want string
	}{
		{"hello", `{"type":"peer_hello","version":1,"relay":"r1","mac":"` + mac + `"}`, ""},
		{"refused", `{"type":"peer_refused","code":"bad_secret"}`, ""},
		{"not json", `{"type":`, "malformed frame"},
		{"unknown type", `{"type":"hello"}`, `type "hello"`},
		{"old version", `{"type":"peer_hello","version":2,"relay":"r1","mac":"` + mac + `"}`, "version 2, want 1"},
		{"no relay", `{"type":"peer_welcome","version":1,"mac":"` + mac + `"}`, "relay id of 0 bytes"},
		{"short mac", `{"type":"peer_hello","version":1,"relay":"r1","mac":"00"}`, "mac of 2 characters"},
		{"mac not hex", `{"type":"peer_hello","version":1,"relay":"r1","mac":"` + strings.Repeat("zz", 32) + `"}`, "not hex"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeFrame([]byte(tt.in))
			if tt.want == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tt.want)
			}
		})
	}
	_, err := readFrame(bytes.NewReader([]byte{0xff, 0xff}))
	require.ErrorContains(t, err, "length 65535")
	_, err = readFrame(bytes.NewReader([]byte{0, 0}))
	require.ErrorContains(t, err, "length 0")
	_, err = readFrame(bytes.NewReader([]byte{0, 9, '{'}))
	require.True(t, errors.Is(err, io.ErrUnexpectedEOF), "%v", err)
}

// FuzzReadFrame: any bytes give a frame or an error, never a panic or an
// allocation over MaxFrameSize.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte("\x00\x0e{\"type\":\"x\"}"))
	f.Add([]byte("\x00\x51{\"type\":\"peer_hello\",\"version\":1,\"relay\":\"r\",\"mac\":\"" + strings.Repeat("0", 64) + "\"}"))
	f.Add([]byte{0xff, 0xff, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := readFrame(bytes.NewReader(b))
		if err == nil && fr.Type != typeHello && fr.Type != typeWelcome && fr.Type != typeRefused {
			t.Fatalf("accepted a frame of type %q", fr.Type)
		}
	})
}

// TestLinkHandshakesBounded: connections that open the relay-to-relay
// port and never speak hold at most MaxPendingHandshakes places; those
// beyond are closed at once, and a real peer links again once they go.
func TestLinkHandshakesBounded(t *testing.T) {
	l, llog := startListener(t, testSecret)
	var idle []net.Conn
	t.Cleanup(func() {
		for _, c := range idle {
			c.Close()
		}
	})
	const extra = 20
	closed := 0
	for range MaxPendingHandshakes + extra {
		c, err := net.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
		idle = append(idle, c)
	}
	// Those over the bound see their connection end at once; the rest
	// wait in their handshake (HandshakeTimeout is far longer).
	ended := make([]bool, len(idle))
	require.Eventually(t, func() bool {
		for i, c := range idle {
			if ended[i] {
				continue
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err == io.EOF {
				ended[i] = true
				closed++
			}
		}
		return closed >= extra
	}, 3*time.Second, 20*time.Millisecond)
	require.Equal(t, extra, closed, "connections beyond the bound are closed at once")
	require.Equal(t, MaxPendingHandshakes, l.pending())
	require.LessOrEqual(t, l.pending(), MaxPendingHandshakes)
	require.Contains(t, llog.String(), "too many relay-to-relay links in handshake")

	for _, c := range idle {
		c.Close()
	}
	require.Eventually(t, func() bool { return l.pending() == 0 }, 5*time.Second, 10*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	good, err := NewDialer(LinkConfig{Relay: "peer", Secret: testSecret})
	require.NoError(t, err)
	c, err := good.Dial(ctx, l.Addr().String())
	require.NoError(t, err)
	c.Close()
}
