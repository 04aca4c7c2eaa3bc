//go:build unix

package logging

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestLevelSetAndSignals(t *testing.T) {
	buf := &lockedBuf{}
	log, lv, err := NewLeveled(buf, "info", "text")
	require.NoError(t, err)
	log.Debug("hidden-1")
	lv.Set(slog.LevelDebug)
	log.Debug("shown-1")
	got, err := lv.SetText("reset")
	require.NoError(t, err)
	require.Equal(t, slog.LevelInfo, got)
	log.Debug("hidden-2")
	_, err = lv.SetText("loud")
	require.ErrorContains(t, err, `"loud"`)

	stop := WatchSignals(context.Background(), lv, log)
	defer stop()
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGUSR1))
	require.Eventually(t, func() bool { return lv.Get() == slog.LevelDebug }, 5*time.Second, 10*time.Millisecond)
	log.Debug("shown-2")
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGUSR2))
	require.Eventually(t, func() bool { return lv.Get() == slog.LevelInfo }, 5*time.Second, 10*time.Millisecond)
	log.Debug("hidden-3")
	require.Eventually(t, func() bool { return bytes.Count([]byte(buf.String()), []byte("log level changed")) == 2 }, 5*time.Second, 10*time.Millisecond)
	out := buf.String()
	require.Contains(t, out, "shown-1")
	require.Contains(t, out, "shown-2")
	require.NotContains(t, out, "hidden")
	require.Contains(t, out, "by=\"user defined signal 1\"")
}
