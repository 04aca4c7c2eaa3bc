package cluster

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/cluster/natstest"
)

var testSecret = bytes.Repeat([]byte("k"), MinSecretLen)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger() (*slog.Logger, *syncBuf) {
	b := &syncBuf{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

func startRegistry(t *testing.T, url, id string, secret []byte, holds Holdings) (*Registry, *syncBuf) {
	t.Helper()
	log, buf := testLogger()
	r, err := NewRegistry(context.Background(), RegistryConfig{
		URL: url, Relay: id, Name: "name-" + id, Advertise: "127.0.0.1:1" + id, Secret: secret,
		Holdings: func() Holdings { return holds }, Heartbeat: 50 * time.Millisecond, Expiry: 300 * time.Millisecond,
		Logger: log,
	})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r, buf
}

// die stops a registry as a killed relay would: no more heartbeats, no
// goodbye.
func (r *Registry) die() {
	r.once.Do(func() {
		close(r.stop)
		r.wg.Wait()
		r.nc.Close()
	})
}

// A relay's entries expire within the expiry of its last heartbeat when
// it dies without a word, and at once when it leaves.
func TestRegistryExpiry(t *testing.T) {
	url := natstest.Start(t)
	a, _ := startRegistry(t, url, "1", testSecret, Holdings{"dc1": {"aaaa0001"}})
	b, _ := startRegistry(t, url, "2", testSecret, Holdings{"dc1": {"bbbb0002"}, "dc2": {"bbbb0003"}})
	c, _ := startRegistry(t, url, "3", testSecret, Holdings{})

	require.Eventually(t, func() bool { return len(c.Lookup("dc1", "")) == 2 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, []Peer{{Relay: "2", Name: "name-2", Addr: "127.0.0.1:12"}}, c.Lookup("dc1", "bbbb0002"))
	require.Empty(t, c.Lookup("dc1", "cccc0004"), "a tag no relay holds")
	require.Empty(t, c.Lookup("dc3", ""), "an agent no relay holds")
	require.Len(t, a.Lookup("dc1", ""), 1, "a relay never finds itself")

	start := time.Now()
	b.die()
	require.Eventually(t, func() bool { return len(c.Lookup("dc2", "")) == 0 }, 5*time.Second, 10*time.Millisecond)
	took := time.Since(start)
	// The promise is a bound: expiry after the last heartbeat.
	require.Less(t, took, 300*time.Millisecond+time.Second, "entries of a dead relay outlived its expiry")
	require.Len(t, c.Lookup("dc1", ""), 1, "the live relay's entries stay")

	a.Leave()
	require.Eventually(t, func() bool { return len(c.Lookup("dc1", "")) == 0 }, 250*time.Millisecond, 5*time.Millisecond,
		"a relay that left is forgotten at once, not after expiry")
}

// Announcements with another secret are ignored (a NATS user without the
// secret cannot divert agents), and the relay says so in its log.
func TestRegistryWrongSecret(t *testing.T) {
	url := natstest.Start(t)
	b, blog := startRegistry(t, url, "2", testSecret, Holdings{})
	startRegistry(t, url, "6", bytes.Repeat([]byte("x"), MinSecretLen), Holdings{"dc1": {"66666666"}})
	require.Eventually(t, func() bool {
		return strings.Contains(blog.String(), "mac does not verify")
	}, 5*time.Second, 10*time.Millisecond)
	require.Empty(t, b.Lookup("dc1", ""))
	require.Empty(t, b.Peers())
}

func TestRegistryConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  RegistryConfig
		want string
	}{
		{"no url", RegistryConfig{Secret: testSecret, Holdings: func() Holdings { return nil }}, "no NATS URL"},
		{"short secret", RegistryConfig{URL: "nats://127.0.0.1:1", Secret: []byte("short"), Holdings: func() Holdings { return nil }}, "want at least 32"},
		{"expiry under two heartbeats", RegistryConfig{URL: "nats://127.0.0.1:1", Secret: testSecret, Holdings: func() Holdings { return nil },
			Heartbeat: time.Second, Expiry: time.Second}, "under two heartbeats"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewRegistry(context.Background(), tt.cfg)
			require.ErrorContains(t, err, tt.want)
		})
	}
}
