package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func rec(i int) *Record {
	return &Record{Client: "alice", Server: "wiki", HTTP: "POST", Kind: "request", Method: "tools/call",
		ID: json.RawMessage(fmt.Sprint(i)), Name: "search", Outcome: OutcomeOK, Status: 200,
		Duration: 1500 * time.Microsecond, BytesIn: 10, BytesOut: 20, ArgumentsSHA256: strings.Repeat("a", 64)}
}

func writeN(t *testing.T, cfg Config, n int) {
	t.Helper()
	l, err := Open(cfg)
	require.NoError(t, err)
	for i := range n {
		require.NoError(t, l.Record(rec(i)))
	}
	require.NoError(t, l.Close())
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return bytes.SplitAfter(b, []byte("\n"))[:bytes.Count(b, []byte("\n"))]
}

func TestChainAndFields(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeN(t, Config{File: path, Agent: "dc1"}, 3)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	lines := readLines(t, path)
	require.Len(t, lines, 3)
	prev := Genesis
	for i, line := range lines {
		var m map[string]any
		require.NoError(t, json.Unmarshal(line, &m))
		require.EqualValues(t, i+1, m["seq"])
		require.Equal(t, prev, m["prev"])
		require.Equal(t, "dc1", m["agent"])
		require.Equal(t, "tools/call", m["method"])
		require.Equal(t, 1.5, m["duration_ms"])
		_, err := time.Parse(time.RFC3339, m["time"].(string))
		require.NoError(t, err)
		require.Regexp(t, `\.\d{3}Z$`, m["time"])
		prev = m["hash"].(string)
	}
	s, err := Verify(path)
	require.NoError(t, err)
	require.Equal(t, 3, s.Lines)
	require.False(t, s.MidChain)

	// A restart continues the chain.
	writeN(t, Config{File: path, Agent: "dc1"}, 2)
	s, err = Verify(path)
	require.NoError(t, err)
	require.Equal(t, 5, s.Lines)
	require.EqualValues(t, 5, s.LastSeq)
}

func TestRotationKeepsChain(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	line := len(readOne(t))
	// About three lines a file, four rotated files kept.
	cfg := Config{File: path, Agent: "dc1", MaxSize: int64(3*line + 10), MaxFiles: 4}
	writeN(t, cfg, 10)
	writeN(t, cfg, 10) // a restart in between: the chain goes on across it
	files, err := filepath.Glob(path + "*")
	require.NoError(t, err)
	require.Len(t, files, 5, "the current file and MaxFiles rotated ones: %v", files)
	for _, f := range files {
		fi, err := os.Stat(f)
		require.NoError(t, err)
		require.LessOrEqual(t, fi.Size(), cfg.MaxSize, f)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), f)
	}
	// The glob puts the current file first; Verify orders by seq.
	s, err := Verify(files...)
	require.NoError(t, err)
	require.True(t, s.MidChain, "the oldest files were removed")
	require.EqualValues(t, 20, s.LastSeq)
	require.Equal(t, path, s.Files[len(s.Files)-1])
	// With the files kept from the start, the chain starts at genesis.
	dir2 := t.TempDir()
	cfg.File, cfg.MaxFiles = filepath.Join(dir2, "audit.log"), 100
	writeN(t, cfg, 10)
	files, _ = filepath.Glob(cfg.File + "*")
	s, err = Verify(files...)
	require.NoError(t, err)
	require.False(t, s.MidChain)
	require.Equal(t, 10, s.Lines)
	// A rotated file missing in the middle is a break.
	require.NoError(t, os.Remove(cfg.File+".000000000004"))
	files, _ = filepath.Glob(cfg.File + "*")
	_, err = Verify(files...)
	var ce *ChainError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, cfg.File+".000000000007", ce.File)
	require.Equal(t, 1, ce.Line)
}

func readOne(t *testing.T) []byte {
	path := filepath.Join(t.TempDir(), "one.log")
	writeN(t, Config{File: path, Agent: "dc1"}, 1)
	return readLines(t, path)[0]
}

func TestVerifyCatches(t *testing.T) {
	tamper := []struct {
		name   string
		edit   func(lines [][]byte) [][]byte
		line   int
		reason string
	}{
		{"edited", func(l [][]byte) [][]byte {
			l[2] = bytes.Replace(l[2], []byte(`"alice"`), []byte(`"mallory"`), 1)
			return l
		}, 3, "edited"},
		{"edited last", func(l [][]byte) [][]byte {
			l[4] = bytes.Replace(l[4], []byte(`"search"`), []byte(`"delete"`), 1)
			return l
		}, 5, "edited"},
		{"deleted", func(l [][]byte) [][]byte { return append(l[:1:1], l[2:]...) }, 2, "removed"},
		{"deleted first", func(l [][]byte) [][]byte { return l[1:] }, 0, ""},
		{"swapped", func(l [][]byte) [][]byte { l[1], l[2] = l[2], l[1]; return l }, 2, "reordered"},
		{"truncated", func(l [][]byte) [][]byte { l[4] = l[4][:len(l[4])/2]; return l }, 5, "cut short"},
		{"truncated mid", func(l [][]byte) [][]byte { l[1] = append(l[1][:len(l[1])/2], '\n'); return l }, 2, "cut short"},
		{"inserted", func(l [][]byte) [][]byte { return append(l[:3], append([][]byte{l[0]}, l[3:]...)...) }, 4, "removed"},
		{"hash recomputed", func(l [][]byte) [][]byte {
			edited := bytes.Replace(l[1], []byte(`"alice"`), []byte(`"mallory"`), 1)
			body := edited[:len(edited)-1-hashSuffixLen]
			l[1] = append(append([]byte{}, body...), fmt.Sprintf(`,"hash":"%s"}`+"\n", sum(body))...)
			return l
		}, 3, "prev does not match"},
	}
	for _, tc := range tamper {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			writeN(t, Config{File: path, Agent: "dc1"}, 5)
			lines := tc.edit(readLines(t, path))
			require.NoError(t, os.WriteFile(path, bytes.Join(lines, nil), 0o600))
			s, err := Verify(path)
			if tc.line == 0 {
				// Lines removed from the start look like rotated-away
				// ones: intact, mid-chain (README says so).
				require.NoError(t, err)
				require.True(t, s.MidChain)
				return
			}
			var ce *ChainError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.line, ce.Line, ce.Error())
			require.Equal(t, path, ce.File)
			require.Contains(t, ce.Reason, tc.reason)
		})
	}
}

func TestConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(Config{File: path, Agent: "dc1", Queue: 8, MaxSize: 64 << 10, MaxFiles: 1000})
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if err := l.Record(rec(g*1000 + i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	require.NoError(t, l.Close())
	require.ErrorIs(t, l.Record(rec(0)), ErrClosed)
	files, _ := filepath.Glob(path + "*")
	require.Greater(t, len(files), 1, "rotated")
	s, err := Verify(files...)
	require.NoError(t, err)
	require.Equal(t, 1600, s.Lines)
	require.EqualValues(t, 1600, l.Stats().Written)
	require.Zero(t, l.Stats().Lost)
}

func TestCanonical(t *testing.T) {
	a, err := HashArguments([]byte(`{"b": [1, 2.50, "x<y"], "a": {"d": null, "c": true}}`))
	require.NoError(t, err)
	b, err := HashArguments([]byte(`{"a":{"c":true,"d":null},"b":[1,2.50,"x\u003cy"]}`))
	require.NoError(t, err)
	require.Equal(t, a, b)
	c, err := Canonical([]byte(`{"b":1,"a":"<"}`))
	require.NoError(t, err)
	require.Equal(t, `{"a":"<","b":1}`, string(c))
	_, err = Canonical([]byte(`{"a":`))
	require.Error(t, err)
}

func TestOpenBadFile(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(Config{File: filepath.Join(dir, "missing", "audit.log")})
	require.Error(t, err)
	require.Contains(t, err.Error(), "missing")
	// A file whose last line is not an audit line: the chain cannot go on.
	path := filepath.Join(dir, "audit.log")
	require.NoError(t, os.WriteFile(path, []byte("hello\n"), 0o600))
	_, err = Open(Config{File: path})
	require.ErrorContains(t, err, "cannot continue the chain")
	_, err = Verify(path)
	var ce *ChainError
	require.True(t, errors.As(err, &ce))
	require.Equal(t, 1, ce.Line)
}

// FuzzVerifyLine feeds arbitrary lines to the verifier after a valid
// start: it must never panic, and accept a line only if it is one the
// writer could have made (its hash and chain check out).
func FuzzVerifyLine(f *testing.F) {
	first, h1 := appendLine(nil, 1, []byte(`"client":"a"`), Genesis)
	second, _ := appendLine(nil, 2, []byte(`"client":"b"`), h1)
	f.Add(second[:len(second)-1])
	f.Add(first[:len(first)-1])
	f.Add([]byte(`{"seq":2,"prev":"` + h1 + `","hash":"` + strings.Repeat("0", 64) + `"}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var v Verifier
		if err := v.Line(first[:len(first)-1]); err != nil {
			t.Fatal(err)
		}
		if err := v.Line(line); err != nil {
			return
		}
		p, err := parseLine(line)
		if err != nil || p.Prev != h1 || p.Seq != 2 || sum(line[:len(line)-hashSuffixLen]) != p.Hash {
			t.Fatalf("accepted a line that does not chain: %q", line)
		}
	})
}

func TestRecordLineIsJSON(t *testing.T) {
	r := rec(1)
	r.Client = "a\"b\\c\x01\xff"
	r.Arguments = json.RawMessage(`{"a":1}`)
	r.BatchIndex, r.BatchSize, r.Code, r.Reason, r.Unread = 1, 2, -32000, "rate_limited", true
	mid, err := r.marshal()
	require.NoError(t, err)
	line, _ := appendLine(nil, 1, mid, Genesis)
	var m map[string]any
	require.NoError(t, json.Unmarshal(line, &m), "%s", line)
	require.Equal(t, "a\"b\\c\x01\uFFFD", m["client"])
	require.Equal(t, map[string]any{"a": 1.0}, m["arguments"])
	require.EqualValues(t, 2, m["batch_size"])
	require.Equal(t, true, m["body_unread"])
	r.ID = json.RawMessage(`{bad`)
	_, err = r.marshal()
	require.Error(t, err)
}

// FuzzCanonical: Canonical accepts what encoding/json accepts (valid
// UTF-8, sane depth), means the same value, and is its own fixed point.
func FuzzCanonical(f *testing.F) {
	f.Add([]byte(`{"b": [1, 2.50, "x<y\u2028"], "a": {"d": null, "c": true}, "a": 1}`))
	f.Add([]byte(`"\ud800"`))
	f.Add([]byte(`[{"":{}},[],-0.0e+1]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Canonical(b)
		if !json.Valid(b) {
			if err == nil {
				t.Fatalf("accepted invalid JSON %q as %q", b, c)
			}
			return
		}
		if !utf8.Valid(b) || bytes.Count(b, []byte("["))+bytes.Count(b, []byte("{")) > 900 {
			return
		}
		if err != nil {
			t.Fatalf("refused %q: %v", b, err)
		}
		decode := func(x []byte) any {
			d := json.NewDecoder(bytes.NewReader(x))
			d.UseNumber()
			var v any
			if err := d.Decode(&v); err != nil {
				t.Fatalf("decode %q: %v", x, err)
			}
			return v
		}
		if !reflect.DeepEqual(decode(b), decode(c)) {
			t.Fatalf("%q became %q: another value", b, c)
		}
		again, err := Canonical(c)
		if err != nil || !bytes.Equal(again, c) {
			t.Fatalf("not a fixed point: %q -> %q (%v)", c, again, err)
		}
	})
}

// The writer holds a line a moment to batch it with the next ones; a full
// queue and Close end the hold at once, so a hold never stalls Records
// or shutdown, and every line is written.
func TestHoldCutShort(t *testing.T) {
	for _, tc := range []struct {
		name  string
		queue int
		lines int
	}{
		{"close", 0, 3},
		{"full queue", 4, 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			l, err := Open(Config{File: path, Agent: "dc1", Queue: tc.queue, Hold: time.Hour})
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() {
				for i := range tc.lines {
					if err := l.Record(rec(i)); err != nil {
						done <- err
						return
					}
				}
				done <- l.Close()
			}()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(20 * time.Second):
				t.Fatal("Records or Close waited out the writer's hold")
			}
			s, err := Verify(path)
			require.NoError(t, err)
			require.Equal(t, tc.lines, s.Lines)
		})
	}
}
