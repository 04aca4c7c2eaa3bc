//go:build !unix

package logging

import (
	"context"
	"log/slog"
)

// WatchSignals does nothing where SIGUSR1 and SIGUSR2 do not exist: the
// level changes only through Level.Set there.
func WatchSignals(context.Context, *Level, *slog.Logger) (stop func()) { return func() {} }
