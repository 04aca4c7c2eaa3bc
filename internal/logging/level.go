package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Level is a role's log level, adjustable while it runs: SIGUSR1 sets
// debug, SIGUSR2 returns to the configured level (WatchSignals), and Set
// is there for an admin endpoint (/api/loglevel). It is safe for
// concurrent use; the logger made with it follows every change at once.
type Level struct {
	v          slog.LevelVar
	configured slog.LevelVar // changed by a configuration reload
}

// NewLevel returns a Level at configured.
func NewLevel(configured slog.Level) *Level {
	l := &Level{}
	l.configured.Set(configured)
	l.v.Set(configured)
	return l
}

// Leveler is what a slog handler is given.
func (l *Level) Leveler() slog.Leveler { return &l.v }

// Get is the level now.
func (l *Level) Get() slog.Level { return l.v.Level() }

// Configured is the level the configuration (or --log-level) set.
func (l *Level) Configured() slog.Level { return l.configured.Level() }

// SetConfigured is a reload's new configured level: it takes effect now,
// and SIGUSR2 (Reset) returns to it from then on.
func (l *Level) SetConfigured(level slog.Level) {
	l.configured.Set(level)
	l.v.Set(level)
}

// Set changes the level now.
func (l *Level) Set(level slog.Level) { l.v.Set(level) }

// Reset returns to the configured level.
func (l *Level) Reset() { l.v.Set(l.configured.Level()) }

// SetText sets the level from its name (debug, info, warn, error; "reset"
// or "" for the configured one), for an admin endpoint. It returns the
// level now in force.
func (l *Level) SetText(name string) (slog.Level, error) {
	if s := strings.TrimSpace(name); s == "" || strings.EqualFold(s, "reset") {
		l.Reset()
		return l.Get(), nil
	}
	lv, err := ParseLevel(name)
	if err != nil {
		return l.Get(), err
	}
	l.Set(lv)
	return lv, nil
}

// ParseLevel reads debug, info, warn or error.
func ParseLevel(name string) (slog.Level, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.TrimSpace(name))); err != nil {
		return 0, fmt.Errorf("logging: level %q: want debug, info, warn or error", name)
	}
	return lv, nil
}

// NewLeveled is New with a Level the caller can change while the logger
// is in use.
func NewLeveled(w io.Writer, level, format string) (*slog.Logger, *Level, error) {
	lv, err := ParseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	l := NewLevel(lv)
	opts := &slog.HandlerOptions{Level: l.Leveler()}
	switch strings.ToLower(format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), l, nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), l, nil
	default:
		return nil, nil, fmt.Errorf("logging: format %q: want text or json", format)
	}
}

// changed logs a change of level, at warn so that it shows whatever the
// level.
func changed(ctx context.Context, log *slog.Logger, l *Level, by string) {
	log.LogAttrs(ctx, slog.LevelWarn, "log level changed", slog.String("level", strings.ToLower(l.Get().String())),
		slog.String("configured", strings.ToLower(l.Configured().String())), slog.String("by", by))
}
