//go:build unix

package mcpproxy

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSetServers: adding a server leaves the sessions of the others
// untouched (same session, same child, calls go on); a removed server's
// sessions end and its endpoint answers 404; a changed server's sessions
// end and new ones start with the new configuration; a bad list changes
// nothing.
func TestSetServers(t *testing.T) {
	ts := ServerConfig{Name: "ts", Command: []string{testServerBin}, Env: map[string]string{"FIXTURE_VAR": "given"}}
	other := ServerConfig{Name: "other", Command: []string{testServerBin}}
	b := newBridge(t, Options{}, other)
	sid := b.initialize(t)
	srvBefore := b.h.table().servers["ts"]
	otherURL := strings.Replace(b.url, "/ts/", "/other/", 1)
	ob := &bridge{h: b.h, srv: b.srv, url: otherURL, logs: b.logs}
	osid := ob.initialize(t)

	// Add "added"; change "other"; keep "ts".
	otherChanged := other
	otherChanged.Env = map[string]string{"FIXTURE_VAR": "changed"}
	added := ServerConfig{Name: "added", Command: []string{testServerBin}}
	ch, err := b.h.SetServers([]ServerConfig{ts, otherChanged, added})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ch.Added, []string{"added"}) || !slices.Equal(ch.Changed, []string{"other"}) ||
		!slices.Equal(ch.Unchanged, []string{"ts"}) || len(ch.Removed) != 0 {
		t.Fatalf("changes %+v", ch)
	}
	if b.h.table().servers["ts"] != srvBefore {
		t.Fatal("unchanged server ts was replaced")
	}
	// ts: same session, still answering.
	if out := b.call(t, sid, `{"jsonrpc":"2.0","id":2,"method":"ping"}`); !strings.Contains(out, `"result"`) {
		t.Fatalf("ts call after reload: %s", out)
	}
	// other: its old session is gone (404: the client starts anew).
	eventually(t, 5*time.Second, "other's old session ended", func() bool {
		st, _ := ob.status(t, http.MethodPost, osid, `{"jsonrpc":"2.0","id":3,"method":"ping"}`)
		return st == http.StatusNotFound
	})
	ob.initialize(t)
	// added: served at once.
	ab := &bridge{h: b.h, srv: b.srv, url: strings.Replace(b.url, "/ts/", "/added/", 1), logs: b.logs}
	ab.initialize(t)

	// Remove "added" and "other".
	ch, err = b.h.SetServers([]ServerConfig{ts})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ch.Removed, []string{"added", "other"}) {
		t.Fatalf("removed %v", ch.Removed)
	}
	if st, body := ab.status(t, http.MethodPost, "", initBody); st != http.StatusNotFound {
		t.Fatalf("removed server answered %d %s", st, body)
	}
	if out := b.call(t, sid, `{"jsonrpc":"2.0","id":4,"method":"ping"}`); !strings.Contains(out, `"result"`) {
		t.Fatalf("ts call after second reload: %s", out)
	}

	// A bad list changes nothing.
	if _, err := b.h.SetServers([]ServerConfig{ts, {Name: "bad", URL: "ftp://x"}}); err == nil {
		t.Fatal("SetServers took an ftp URL")
	}
	if _, err := b.h.SetServers(nil); err == nil {
		t.Fatal("SetServers took no servers")
	}
	if b.h.table().servers["ts"] != srvBefore || len(b.h.table().servers) != 1 {
		t.Fatal("a refused SetServers changed the table")
	}
	if out := b.call(t, sid, `{"jsonrpc":"2.0","id":5,"method":"ping"}`); !strings.Contains(out, `"result"`) {
		t.Fatalf("ts call after refused reload: %s", out)
	}
}
