package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/internal/logging"
)

// Hot reload (README: Reloading configuration). A role reloads its file on
// SIGHUP and when the file changes. The new file is loaded and validated
// as at start; if that fails, the error (file, key, reason) is logged and
// the running configuration stays. Otherwise every part of the role whose
// keys changed takes the new values live, and changed keys no part takes
// are logged as needing a restart.
//
// A section that can change live plugs in as a reloadPart: the keys it
// covers and a prepare function that checks the new values and returns
// the commit that applies them. Every part prepares before any commits, so
// a part that refuses the new file leaves every part as it was.

// reloadPart is one live-reloadable part of a role with config type C.
type reloadPart[C any] struct {
	// keys are the config keys (and key prefixes: "clients" covers
	// "clients[0].allow") the part applies; see config.ChangedKeys.
	keys []string
	// always: prepare runs on every reload, keys changed or not, for a
	// part that reads files the configuration names (a certificate
	// renewed under the same name).
	always bool
	// prepare is called when one of keys changed. It checks new and
	// returns the commit that applies it (nil: nothing to do); an error
	// refuses the whole reload. commit returns a summary of the change
	// for the log: names, never secrets or values of secrets.
	prepare func(old, new *C) (commit func() (summary string, err error), err error)
}

// reloader holds a role's configuration as last applied and applies new
// ones. reload calls are serialised.
type reloader[C any] struct {
	path     string
	load     func(path string) (*C, error)
	warnings func(*C) []*config.Error
	parts    []reloadPart[C]
	log      *slog.Logger

	mu      sync.Mutex
	started *C // as the role started: what keys needing a restart still run with
	cur     *C // as last applied
}

func newReloader[C any](path string, cur *C, load func(string) (*C, error), warnings func(*C) []*config.Error, log *slog.Logger, parts ...reloadPart[C]) *reloader[C] {
	return &reloader[C]{path: path, load: load, warnings: warnings, parts: parts, log: log, started: cur, cur: cur}
}

// errReloadRefused wraps why a reload was refused.
var errReloadRefused = errors.New("config reload refused")

// reload loads the file again and applies it; trigger says why, for the
// log ("SIGHUP", "file changed").
func (r *reloader[C]) reload(trigger string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	next, err := r.load(r.path)
	if err != nil {
		r.log.Error("config reload refused: the running configuration stays", "file", r.path, "trigger", trigger, "err", err)
		return fmt.Errorf("%w: %w", errReloadRefused, err)
	}
	logWarnings(r.log, r.warnings(next))
	changed := config.ChangedKeys(r.cur, next)
	var commits []func() (string, error)
	for _, p := range r.parts {
		if !p.always && !anyKeyIn(changed, p.keys) {
			continue
		}
		commit, err := p.prepare(r.cur, next)
		if err != nil {
			r.log.Error("config reload refused: the running configuration stays", "file", r.path, "trigger", trigger, "err", err)
			return fmt.Errorf("%w: %w", errReloadRefused, err)
		}
		if commit != nil {
			commits = append(commits, commit)
		}
	}
	var applied []string
	var failed []error
	for _, commit := range commits {
		summary, err := commit()
		if err != nil {
			failed = append(failed, err)
			continue
		}
		if summary != "" {
			applied = append(applied, summary)
		}
	}
	// Keys no part takes run with the values the role started with,
	// whatever reloads came since: compare with those.
	var restart []string
	for _, k := range config.ChangedKeys(r.started, next) {
		if !r.live(k) {
			restart = append(restart, k)
		}
	}
	r.cur = next
	if len(restart) > 0 {
		r.log.Warn("config reload: these keys changed but take effect only after a restart (needs restart); the running values stay",
			"file", r.path, "keys", strings.Join(restart, ","))
	}
	if len(failed) > 0 {
		err := errors.Join(failed...)
		r.log.Error("config reload: applying part of the new configuration failed", "file", r.path, "trigger", trigger, "err", err)
		return err
	}
	if len(applied) == 0 {
		r.log.Info("config reloaded: nothing to change live", "file", r.path, "trigger", trigger)
		return nil
	}
	r.log.Info("config reloaded", "file", r.path, "trigger", trigger, "changes", strings.Join(applied, "; "))
	return nil
}

// live reports whether a part applies key without a restart.
func (r *reloader[C]) live(key string) bool {
	for _, p := range r.parts {
		if config.KeyIn(key, p.keys...) {
			return true
		}
	}
	return false
}

func anyKeyIn(changed, keys []string) bool {
	for _, k := range changed {
		if config.KeyIn(k, keys...) {
			return true
		}
	}
	return false
}

// sameCert reports whether two certificates have the same chain.
func sameCert(a, b *tls.Certificate) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.Certificate, b.Certificate, bytes.Equal)
}

// logLevelPart applies log.level live; --log-level, when given, wins over
// the file as it does at start.
func logLevelPart[C any](cmd *cobra.Command, lv *logging.Level, level func(*C) string) reloadPart[C] {
	return reloadPart[C]{
		keys: []string{"log.level"},
		prepare: func(old, new *C) (func() (string, error), error) {
			if l, _ := cmd.Flags().GetString("log-level"); l != "" {
				return nil, nil
			}
			var next slog.Level
			if err := next.UnmarshalText([]byte(level(new))); err != nil {
				return nil, fmt.Errorf("log.level: %w", err)
			}
			return func() (string, error) {
				lv.SetConfigured(next)
				return fmt.Sprintf("log.level %s→%s", level(old), level(new)), nil
			}, nil
		},
	}
}

// notifyHUP takes SIGHUP over from its default action (which ends the
// process) for the rest of the process's life; the channel gets one
// signal at a time, later ones being dropped while one waits. Called
// first thing, so a SIGHUP during start-up does not end the role either.
func notifyHUP() chan os.Signal {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup
}

// reloadDebounce is how long the file must be quiet after a change before
// it is read: editors and kubelet write in several steps.
const reloadDebounce = 250 * time.Millisecond

// runReloads calls reload on each SIGHUP and, with watch, when the
// config file's content changes, until ctx ends. It watches the file's
// directory, not the file: editors save by renaming a new file over the
// old one, and Kubernetes swaps a ConfigMap's files by replacing a
// symlink, and a watch on the file itself would lose it at the first
// save. Any event in the directory (debounced) makes it read the file and
// compare its content with what was last loaded.
func runReloads(ctx context.Context, hup <-chan os.Signal, path string, watch bool, log *slog.Logger, reload func(trigger string) error) {
	last := fileSum(path)
	var events <-chan fsnotify.Event
	var errs <-chan error
	if watch {
		w, err := watchDir(path)
		if err != nil {
			log.Warn("config: cannot watch the file for changes; reload with SIGHUP", "file", path, "err", err)
		} else {
			defer w.Close()
			events, errs = w.Events, w.Errors
		}
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	base := filepath.Base(path)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reloading the configuration", "file", path)
			last = fileSum(path)
			_ = reload("SIGHUP")
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// Other files in the directory change too (logs, a state
			// file): only those that can be the config file, or a
			// symlink on its way (Kubernetes' ..data), count.
			name := filepath.Base(ev.Name)
			if name == base || strings.HasPrefix(name, "..") || ev.Op&(fsnotify.Create|fsnotify.Rename|fsnotify.Remove) != 0 {
				debounce.Reset(reloadDebounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			log.Warn("config: file watch error", "file", path, "err", err)
		case <-debounce.C:
			sum := fileSum(path)
			if sum == nil || bytes.Equal(sum, last) {
				// Gone mid-save, or the same bytes (a touch, another
				// file): nothing to load.
				continue
			}
			last = sum
			_ = reload("file changed")
		}
	}
}

func watchDir(path string) (*fsnotify.Watcher, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// fileSum is the SHA-256 of the file's content (following symlinks), or
// nil if it cannot be read.
func fileSum(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	s := sha256.Sum256(b)
	return s[:]
}

// reloadParts are what a reload changes in a running relay: who may use it
// (clients, agents: their sessions go on unless their credential is gone)
// and the log level. Other keys need a restart (see reloader).
func (rr *runningRelay) reloadParts(cmd *cobra.Command, lv *logging.Level, path string, log *slog.Logger) []reloadPart[config.Relay] {
	return []reloadPart[config.Relay]{
		{
			// Certificates are read again on every reload: renewal
			// tools replace the files under the same names. New
			// handshakes get the new certificate; connections and
			// tunnels up keep theirs. Agents that pin the relay's key
			// (pin_sha256) accept a new certificate only with the same
			// key.
			keys:   []string{"tunnel.cert_file", "tunnel.key_file", "http.cert_file", "http.key_file"},
			always: true,
			prepare: func(old, new *config.Relay) (func() (string, error), error) {
				tunnelCert, httpCert, err := loadRelayCerts(path, new)
				if err != nil {
					return nil, err
				}
				return func() (string, error) {
					var changed []string
					if !sameCert(rr.tunnelCert.Load(), &tunnelCert) {
						rr.tunnelCert.Store(&tunnelCert)
						changed = append(changed, "tunnel")
					}
					switch cur := rr.httpCert.Load(); {
					case (cur == nil) != (httpCert == nil):
						log.Warn("config reload: switching the HTTP front between HTTP and HTTPS needs restart; it keeps serving as it started",
							"file", path, "keys", "http.cert_file,http.key_file")
					case cur != nil && !sameCert(cur, httpCert):
						rr.httpCert.Store(httpCert)
						changed = append(changed, "http")
					}
					if len(changed) == 0 {
						return "", nil
					}
					return "certificate reloaded: " + strings.Join(changed, ","), nil
				}, nil
			},
		},
		{
			keys: []string{"clients", "agents"},
			prepare: func(old, new *config.Relay) (func() (string, error), error) {
				creds, known, clients, err := relayAuth(new)
				if err != nil {
					return nil, err
				}
				name := func(c config.RelayClient) string { return c.Name }
				var summary []string
				if d := config.DescribeNamed(config.NamedChanges(old.Clients, new.Clients, name)); d != "" {
					summary = append(summary, "clients "+d)
				}
				if d := config.DescribeNamed(config.NamedChanges(old.Agents, new.Agents, func(a config.RelayAgent) string { return a.Name })); d != "" {
					summary = append(summary, "agents "+d)
				}
				return func() (string, error) {
					// Names and clients first: an agent whose credential
					// goes is refused as unknown from the moment its
					// session is cut.
					if err := rr.Handler.Reconfigure(known, clients); err != nil {
						return "", err
					}
					cut, err := rr.Tunnel.SetAgents(creds)
					if cut > 0 {
						summary = append(summary, fmt.Sprintf("%d agent session(s) disconnected", cut))
					}
					return strings.Join(summary, "; "), err
				}, nil
			},
		},
		logLevelPart(cmd, lv, func(c *config.Relay) string { return c.Log.Level }),
	}
}

// reloadParts are what a reload changes in a running agent: its servers
// (those that did not change keep their sessions; the relays are told the
// new offers) and the log level. Other keys, the relay connection among
// them, need a restart.
func (ra *runningAgent) reloadParts(cmd *cobra.Command, lv *logging.Level, log *slog.Logger) []reloadPart[config.Agent] {
	return []reloadPart[config.Agent]{
		{
			keys: []string{"servers"},
			prepare: func(_, new *config.Agent) (func() (string, error), error) {
				servers, offered := agentServers(new)
				if err := ra.handler.CheckSetServers(servers); err != nil {
					return nil, err
				}
				return func() (string, error) {
					ch, err := ra.handler.SetServers(servers)
					if err != nil {
						return "", err
					}
					if err := ra.Relays.SetServers(offered); err != nil {
						// The next hello carries them; until then the
						// relay routes by the old list (404 from here).
						log.Warn("cannot tell every relay the new servers; they learn them when they reconnect", "err", err)
					}
					return "servers " + config.DescribeNamed(ch.Added, ch.Removed, ch.Changed), nil
				}, nil
			},
		},
		logLevelPart(cmd, lv, func(c *config.Agent) string { return c.Log.Level }),
	}
}
