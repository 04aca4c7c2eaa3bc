//go:build unix

package logging

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// WatchSignals changes l on SIGUSR1 (to debug) and SIGUSR2 (back to the
// configured level) until ctx ends; stop ends it sooner and waits for its
// goroutine. Each change is logged to log.
func WatchSignals(ctx context.Context, l *Level, log *slog.Logger) (stop func()) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGUSR1, syscall.SIGUSR2)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-ch:
				if s == syscall.SIGUSR1 {
					l.Set(slog.LevelDebug)
				} else {
					l.Reset()
				}
				changed(ctx, log, l, s.String())
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		cancel()
		<-done
	}
}
