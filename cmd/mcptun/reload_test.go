package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/internal/logging"
)

type reloadCall struct{ trigger, content string }

// startWatch runs runReloads on path until the test ends; each reload
// reports its trigger and the file's content then. It returns once the
// watch is in place (a SIGHUP was handled).
func startWatch(t *testing.T, path string) (hup chan os.Signal, calls chan reloadCall) {
	t.Helper()
	hup = make(chan os.Signal, 1)
	calls = make(chan reloadCall, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		runReloads(ctx, hup, path, true, slog.New(slog.DiscardHandler), func(trigger string) error {
			b, _ := os.ReadFile(path)
			calls <- reloadCall{trigger, string(b)}
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	hup <- syscall.SIGHUP
	if c := nextCall(t, calls); c.trigger != "SIGHUP" {
		t.Fatalf("first reload %+v, want the SIGHUP's", c)
	}
	return hup, calls
}

func nextCall(t *testing.T, calls chan reloadCall) reloadCall {
	t.Helper()
	select {
	case c := <-calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no reload within 10s")
		return reloadCall{}
	}
}

// TestRunReloadsConfigMapSwap: Kubernetes updates a mounted ConfigMap by
// pointing the ..data symlink at a new directory; the config file is a
// symlink through ..data, and no event names it. The change is seen.
func TestRunReloadsConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	for v, content := range map[string]string{"..v1": "a: 1\n", "..v2": "a: 2\n"} {
		if err := os.Mkdir(filepath.Join(dir, v), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, v, "agent.yaml"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("..v1", filepath.Join(dir, "..data")))
	path := filepath.Join(dir, "agent.yaml")
	must(os.Symlink("..data/agent.yaml", path))
	_, calls := startWatch(t, path)

	must(os.Symlink("..v2", filepath.Join(dir, "..data_tmp")))
	must(os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	if c := nextCall(t, calls); c.trigger != "file changed" || c.content != "a: 2\n" {
		t.Fatalf("reload %+v, want a file change to a: 2", c)
	}
}

// TestRunReloadsEditorSave: an editor's save (a new file renamed over the
// old one) and a write in place are both seen, one after the other: the
// watch survives the rename.
func TestRunReloadsEditorSave(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(path, []byte("v: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hup, calls := startWatch(t, path)
	tmp := filepath.Join(dir, ".relay.yaml.swp")
	if err := os.WriteFile(tmp, []byte("v: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if c := nextCall(t, calls); c.trigger != "file changed" || c.content != "v: 2\n" {
		t.Fatalf("reload %+v after the rename", c)
	}
	if err := os.WriteFile(path, []byte("v: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c := nextCall(t, calls); c.trigger != "file changed" || c.content != "v: 3\n" {
		t.Fatalf("reload %+v after the write in place", c)
	}
	hup <- syscall.SIGHUP
	if c := nextCall(t, calls); c.trigger != "SIGHUP" {
		t.Fatalf("reload %+v, want SIGHUP's", c)
	}
}

// TestLogLevelPart: log.level applies live, unless --log-level was given
// (it wins over the file, as at start).
func TestLogLevelPart(t *testing.T) {
	type cfg struct{ level string }
	for _, tc := range []struct {
		flag string
		want slog.Level
	}{{"", slog.LevelDebug}, {"warn", slog.LevelWarn}} {
		cmd := &cobra.Command{}
		cmd.Flags().String("log-level", "", "")
		if tc.flag != "" {
			if err := cmd.Flags().Set("log-level", tc.flag); err != nil {
				t.Fatal(err)
			}
		}
		start, _ := logging.ParseLevel(map[string]string{"": "info", "warn": "warn"}[tc.flag])
		lv := logging.NewLevel(start)
		p := logLevelPart(cmd, lv, func(c *cfg) string { return c.level })
		commit, err := p.prepare(&cfg{"info"}, &cfg{"debug"})
		if err != nil {
			t.Fatal(err)
		}
		if commit != nil {
			if _, err := commit(); err != nil {
				t.Fatal(err)
			}
		}
		if lv.Get() != tc.want || lv.Configured() != tc.want {
			t.Errorf("--log-level %q: level %v (configured %v) after reload, want %v", tc.flag, lv.Get(), lv.Configured(), tc.want)
		}
	}
}

type partsCfg struct {
	A string `mapstructure:"a"`
	B string `mapstructure:"b"`
	R string `mapstructure:"r"`
}

// TestReloaderAllOrNothing: the parts of a role prepare before any
// commits, so one part refusing the new file leaves every part as it was;
// a bad file is refused whole; keys no part takes are named as needing a
// restart, against the values the role started with.
func TestReloaderAllOrNothing(t *testing.T) {
	var logBuf strings.Builder
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	next := &partsCfg{A: "1", B: "1", R: "1"}
	var loadErr error
	var commits []string
	part := func(key string, get func(*partsCfg) string) reloadPart[partsCfg] {
		return reloadPart[partsCfg]{keys: []string{key}, prepare: func(_, n *partsCfg) (func() (string, error), error) {
			if get(n) == "bad" {
				return nil, errors.New("config f.yaml: " + key + ": bad")
			}
			return func() (string, error) { commits = append(commits, key+"="+get(n)); return key + " changed", nil }, nil
		}}
	}
	r := newReloader("f.yaml", &partsCfg{A: "1", B: "1", R: "1"},
		func(string) (*partsCfg, error) {
			if loadErr != nil {
				return nil, loadErr
			}
			c := *next
			return &c, nil
		}, func(*partsCfg) []*config.Error { return nil }, log,
		part("a", func(c *partsCfg) string { return c.A }), part("b", func(c *partsCfg) string { return c.B }))

	next = &partsCfg{A: "2", B: "bad", R: "1"}
	if err := r.reload("test"); !errors.Is(err, errReloadRefused) {
		t.Fatalf("reload with a part refusing: %v", err)
	}
	if len(commits) != 0 {
		t.Fatalf("commits %v ran although part b refused", commits)
	}
	loadErr = errors.New("config f.yaml: a: not a string")
	if err := r.reload("test"); !errors.Is(err, errReloadRefused) || !strings.Contains(logBuf.String(), `level=ERROR msg="config reload refused: the running configuration stays" file=f.yaml trigger=test err="config f.yaml: a: not a string"`) {
		t.Fatalf("bad file: %v\n%s", err, logBuf.String())
	}
	loadErr = nil
	next = &partsCfg{A: "2", B: "1", R: "2"}
	if err := r.reload("test"); err != nil {
		t.Fatal(err)
	}
	if strings.Join(commits, ",") != "a=2" {
		t.Fatalf("commits %v, want a=2 only (b did not change)", commits)
	}
	if !strings.Contains(logBuf.String(), "needs restart") || !strings.Contains(logBuf.String(), "keys=r") {
		t.Fatalf("no needs-restart line for r:\n%s", logBuf.String())
	}
	// r still differs from what the role started with: named again.
	next = &partsCfg{A: "3", B: "1", R: "2"}
	logBuf.Reset()
	if err := r.reload("test"); err != nil || !strings.Contains(logBuf.String(), "keys=r") {
		t.Fatalf("second reload: %v\n%s", err, logBuf.String())
	}
	if !strings.Contains(logBuf.String(), `msg="config reloaded" file=f.yaml trigger=test changes="a changed"`) {
		t.Fatalf("no summary line:\n%s", logBuf.String())
	}
}
