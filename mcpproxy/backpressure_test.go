//go:build unix

package mcpproxy

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"
)

// floodScript is a stdio MCP server (a real child: sh) that answers
// initialize, waits for one more client message (sent once the test's GET
// stream is open), then writes COUNT numbered notifications of SIZE bytes
// of padding as fast as its stdout takes them, then "done". Its writes
// block when the agent stops reading: nothing in it drops a message.
const floodScript = `read -r init
printf '%s\n' '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{"logging":{}},"serverInfo":{"name":"flood","version":"1"}}}'
read -r initialized
read -r go
pad=$(head -c "$SIZE" /dev/zero | tr '\0' x)
i=1
while [ "$i" -le "$COUNT" ]; do
	printf '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"%d %s"}}\n' "$i" "$pad"
	i=$((i+1))
done
printf '%s\n' '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"done"}}'
cat >/dev/null
`

func floodServer(count, size int) ServerConfig {
	return ServerConfig{Name: "flood", Command: []string{"/bin/sh", "-c", floodScript},
		Env: map[string]string{"COUNT": strconv.Itoa(count), "SIZE": strconv.Itoa(size)}}
}

// vmRSS returns the process's resident set size from /proc.
func vmRSS(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(string(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// forcedGCs counts the garbage collections forced (runtime.GC,
// debug.FreeOSMemory) so far.
func forcedGCs() uint64 {
	sample := []metrics.Sample{{Name: "/gc/cycles/forced:gc-cycles"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

func heapAlloc() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// TestSlowReaderBoundsBuffer (defect: a stdio server's output was
// buffered without bound for a client that does not read): a child floods
// notifications (40 MiB) into a GET stream whose client does not read.
// The session's replay buffer stays within its bound (8 MiB, plus the one
// message that crossed it) because the agent stops reading the child
// (backpressure); once the client reads, it gets every message, in order;
// after the session ends the memory is back.
func TestSlowReaderBoundsBuffer(t *testing.T) {
	const count, size = 2500, 16 << 10
	b := newBridge(t, Options{}, floodServer(count, size))
	fb := &bridge{h: b.h, srv: b.srv, url: b.srv.URL + "/flood/mcp", logs: b.logs}
	srv := b.h.table().servers["flood"].(*stdioServer)
	base, rss0 := heapAlloc(), vmRSS(t)

	sid := fb.initializeAs(t, "alice")
	get := fb.openStream(t, sid, "alice") // and never read, for now
	if code, out := fb.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`, as("alice")...); code != http.StatusAccepted {
		t.Fatalf("go: %d %s", code, out)
	}
	const bound = replayMaxBytes + size + 200 // the bound and the message that crossed it
	s := fb.session(t, sid)
	eventually(t, 60*time.Second, "the child held back (or the buffer past its bound)", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.heldBack || srv.peakBuffered.Load() > bound
	})
	peak, rssHeld := srv.peakBuffered.Load(), vmRSS(t)
	t.Logf("held back: replay buffer peak %d bytes (bound %d), RSS %d MiB (before the session: %d MiB)",
		peak, int64(replayMaxBytes), rssHeld>>20, rss0>>20)
	if peak > bound {
		t.Fatalf("replay buffer reached %d bytes for a client that does not read: over its bound of %d", peak, int64(replayMaxBytes))
	}
	if b.logs.find("not reading its stream", "holding the server's output back") == "" {
		t.Fatal("holding the server back is not logged")
	}

	// Nothing was dropped: the client reads now and gets every message.
	rd := newSSEReader(get.Body)
	for i := 1; i <= count; i++ {
		ev := rd.nextData(t)
		if want := fmt.Sprintf(`"data":"%d `, i); !strings.Contains(ev.data[:min(len(ev.data), 120)], want) {
			t.Fatalf("message %d: got %.120s", i, ev.data)
		}
	}
	if ev := rd.nextData(t); !strings.Contains(ev.data, `"data":"done"`) {
		t.Fatalf("after the flood: %.120s", ev.data)
	}
	if peak := srv.peakBuffered.Load(); peak > bound {
		t.Fatalf("replay buffer reached %d bytes: over its bound of %d", peak, int64(replayMaxBytes))
	}
	get.Body.Close()
	forced := forcedGCs() // nothing in this test forces one until the heap checks below
	if code, out := fb.status(t, http.MethodDelete, sid, "", as("alice")...); code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", code, out)
	}
	// The handler hands a large buffer's memory back to the system once
	// the session is over (rather than at the runtime's next forced
	// collection, up to 2 minutes away on an idle agent).
	eventually(t, 20*time.Second, "the handler releasing the session's memory", func() bool { return forcedGCs() > forced })

	// The session's memory is back: the heap within 4 MiB of where it was
	// (the buffer alone was 8), and (the handler hands it back to the
	// system) so is the RSS, within 8 MiB.
	eventually(t, 20*time.Second, "the heap back to its size before the session", func() bool {
		return heapAlloc() < base+4<<20
	})
	if !raceEnabled {
		eventually(t, 20*time.Second, "the RSS back to its size before the session", func() bool {
			return vmRSS(t) < rss0+8<<20
		})
	}
	t.Logf("after the session: heap %d MiB (before: %d MiB), RSS %d MiB", heapAlloc()>>20, base>>20, vmRSS(t)>>20)
}

// TestStalledReaderCutAndResumes: a client that reads nothing of its GET
// stream for WriteTimeout is cut, with a logged reason; the child is not
// held back for it any longer (what the client missed beyond the replay
// window is dropped, logged), and the client resumes with Last-Event-ID up
// to the end.
func TestStalledReaderCutAndResumes(t *testing.T) {
	const count, size = 1500, 16 << 10
	b := newBridge(t, Options{WriteTimeout: 300 * time.Millisecond}, floodServer(count, size))
	fb := &bridge{h: b.h, srv: b.srv, url: b.srv.URL + "/flood/mcp", logs: b.logs}
	srv := b.h.table().servers["flood"].(*stdioServer)
	sid := fb.initializeAs(t, "alice")
	get := fb.openStream(t, sid, "alice")
	if code, out := fb.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`, as("alice")...); code != http.StatusAccepted {
		t.Fatalf("go: %d %s", code, out)
	}
	eventually(t, 30*time.Second, "the stalled stream cut", func() bool {
		return b.logs.find("read nothing of its stream for the write timeout") != ""
	})
	// What reached the client before the cut, up to its last whole event.
	rd := newSSEReader(get.Body)
	last, seen := "", 0
	for {
		ev, err := rd.next()
		if err != nil {
			break
		}
		if ev.data != "" {
			seen++
		}
		last = ev.id
	}
	get.Body.Close()
	t.Logf("read %d messages before the cut; resuming after %s", seen, last)

	resumed := fb.do(t, http.MethodGet, sid, "", append(as("alice"), "Last-Event-ID", last)...)
	defer resumed.Body.Close()
	if resumed.StatusCode != http.StatusOK {
		t.Fatalf("resume: %d %s", resumed.StatusCode, readBody(t, resumed))
	}
	rd, prev := newSSEReader(resumed.Body), 0
	for {
		ev := rd.nextData(t)
		if strings.Contains(ev.data, `"data":"done"`) {
			break
		}
		var n int
		if _, err := fmt.Sscanf(ev.data[strings.Index(ev.data, `"data":"`)+8:], "%d ", &n); err != nil || n <= prev {
			t.Fatalf("after message %d: %.120s", prev, ev.data)
		}
		prev = n
	}
	if prev < count-replayMaxEvents {
		t.Fatalf("the resumed stream ended at message %d of %d", prev, count)
	}
	if peak := srv.peakBuffered.Load(); peak > replayMaxBytes+size+200 {
		t.Fatalf("replay buffer reached %d bytes: over its bound of %d", peak, int64(replayMaxBytes))
	}
}

// floodStatelessScript is a stateless-era stdio server: for its first
// request (our id 1, progress token 1) it writes COUNT progress
// notifications of SIZE bytes, then the answer, then "flood over" to
// stderr; it reads nothing more until its stdin closes.
const floodStatelessScript = `read -r req
pad=$(head -c "$SIZE" /dev/zero | tr '\0' x)
i=1
while [ "$i" -le "$COUNT" ]; do
	printf '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":%d,"message":"%s"}}\n' "$i" "$pad"
	i=$((i+1))
done
printf '%s\n' '{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'
echo "flood over" >&2
cat >/dev/null
`

// TestStalledStatelessStreamIsCut: the stateless era's child is shared by
// every client of the server, so a client that does not read its
// request's stream is not allowed to hold it back: past the replay
// buffer's bound that stream is cut and its request cancelled, logged,
// and the child goes on.
func TestStalledStatelessStreamIsCut(t *testing.T) {
	const count, size = 1500, 16 << 10
	sc := ServerConfig{Name: "flood", Command: []string{"/bin/sh", "-c", floodStatelessScript},
		Env: map[string]string{"COUNT": strconv.Itoa(count), "SIZE": strconv.Itoa(size)}}
	// The default write timeout: the bound, not the timeout, cuts here.
	b := newBridge(t, Options{}, sc)
	srv := b.h.table().servers["flood"].(*stdioServer)
	b.url = b.srv.URL + "/flood/mcp"
	resp := b.statelessPost(t, "7", "tools/call", "slow", `{}`, `"tok"`)
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stateless call: %d %s", resp.StatusCode, readBody(t, resp))
	}
	eventually(t, 30*time.Second, "the stalled stateless stream cut", func() bool {
		return b.logs.find("stateless client is not reading its stream") != ""
	})
	eventually(t, 30*time.Second, "the shared child done with its flood", func() bool {
		return b.logs.find("flood over") != ""
	})
	if peak := srv.peakBuffered.Load(); peak > replayMaxBytes+size+200 {
		t.Fatalf("replay buffer reached %d bytes: over its bound of %d", peak, int64(replayMaxBytes))
	}
	srv.mu.Lock()
	s := srv.shared
	srv.mu.Unlock()
	s.mu.Lock()
	held, pending := s.bufBytes, len(s.pending)
	s.mu.Unlock()
	if held > replayMaxBytes || pending != 0 {
		t.Fatalf("after the cut: %d bytes buffered, %d requests in flight", held, pending)
	}
}
