package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config says where and how the trail is written.
type Config struct {
	// File is the current file; rotated files are File.<seq of their
	// first line, 12 digits>, so that their names sort oldest first.
	File string
	// Agent is the agent's name, on every line.
	Agent string
	// FullArguments writes the arguments themselves (canonical JSON)
	// instead of their SHA-256.
	FullArguments bool
	// MaxSize rotates File before a line would take it over this many
	// bytes (a line larger than MaxSize gets a file of its own). Default
	// 100 MiB.
	MaxSize int64
	// MaxFiles is how many rotated files are kept besides File; older
	// ones are removed. Default 10.
	MaxFiles int
	// Queue bounds the lines waiting for the writer. Default 4096.
	Queue int
	// SyncEvery is how often written lines are fsynced. Default 1 s.
	SyncEvery time.Duration
	// Hold is how long the writer, woken by a line, waits for more
	// before it writes them all at once. Default DefaultHold; negative:
	// no wait.
	Hold time.Duration
	// Logger is told of write failures and of a full queue.
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultMaxSize   = 100 << 20
	DefaultMaxFiles  = 10
	DefaultQueue     = 4096
	DefaultSyncEvery = time.Second
	// DefaultHold: at a busy agent's rate (1,500 exchanges a second) a
	// line per write(2), each waking the writer, cost more than the rest
	// of the audit together; held 10 ms, a batch is ~15 lines with two
	// wake-ups and one write.
	DefaultHold = 10 * time.Millisecond
	// MaxBody is how much of a request body, and of one answer message,
	// the agent keeps to read the audit's fields from. A larger request is
	// recorded with body_unread.
	MaxBody = 4 << 20
)

// ErrClosed is Record after Close.
var ErrClosed = errors.New("audit: trail closed")

// Log is an open audit trail. Record hands lines to one writer goroutine
// through a bounded queue; when the queue is full Record waits (a bank
// would rather have a request wait than a line lost) and the wait is
// counted and logged. Lines reach the file (one write per batch of
// queued lines) as soon as the writer takes them, and are fsynced at
// most SyncEvery later, on rotation and on Close: a power failure may
// lose up to SyncEvery of lines, a crashed agent none.
type Log struct {
	cfg     Config
	log     *slog.Logger
	q       chan []byte
	closing chan struct{}
	stopped chan struct{}
	full    chan struct{} // (capacity 1) a Record found the queue full: cut the writer's hold short
	once    sync.Once
	mu      sync.RWMutex // Record holds it for reading; Close sets closed under it
	closed  bool

	waits      atomic.Int64 // Record calls that found the queue full
	lost       atomic.Int64 // lines not written (write errors)
	written    atomic.Int64
	waitLogged atomic.Int64 // unix nanos of the last "queue full" line

	// The writer's own state.
	f        *os.File
	size     int64
	firstSeq uint64 // of the current file (0: empty)
	seq      uint64 // last line written
	prev     string // its hash
	dirty    bool
}

// Open opens (or creates, mode 0600) cfg.File, continuing the chain from
// its last line, or from the newest rotated file's if File is empty, and
// starts the writer.
func Open(cfg Config) (*Log, error) {
	if cfg.File == "" {
		return nil, errors.New("audit: no file")
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	if cfg.MaxFiles <= 0 {
		cfg.MaxFiles = DefaultMaxFiles
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.SyncEvery <= 0 {
		cfg.SyncEvery = DefaultSyncEvery
	}
	if cfg.Hold == 0 {
		cfg.Hold = DefaultHold
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Log{cfg: cfg, log: cfg.Logger, q: make(chan []byte, cfg.Queue), closing: make(chan struct{}), stopped: make(chan struct{}),
		full: make(chan struct{}, 1), prev: Genesis}
	if err := l.openCurrent(); err != nil {
		return nil, err
	}
	go l.run()
	return l, nil
}

// openCurrent opens File for appending and finds where the chain stands.
func (l *Log) openCurrent() error {
	f, err := os.OpenFile(l.cfg.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit: open %w", err)
	}
	// An existing file keeps its mode unless it is wider than 0600.
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return fmt.Errorf("audit: chmod %s: %w", l.cfg.File, err)
		}
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: %w", err)
	}
	l.f, l.size = f, fi.Size()
	from := l.cfg.File
	if l.size == 0 {
		rotated, err := l.rotated()
		if err != nil {
			f.Close()
			return err
		}
		if len(rotated) == 0 {
			return nil
		}
		from = rotated[len(rotated)-1]
	} else if first, err := firstLine(l.cfg.File); err == nil {
		if p, perr := parseLine(first); perr == nil {
			l.firstSeq = p.Seq
		}
	}
	last, err := lastLine(from)
	if err != nil {
		f.Close()
		return err
	}
	if last == nil {
		return nil
	}
	p, err := parseLine(last)
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: cannot continue the chain of %s: its last line: %w", from, err)
	}
	l.seq, l.prev = p.Seq, p.Hash
	if l.size > 0 && l.firstSeq == 0 {
		l.firstSeq = p.Seq
	}
	return nil
}

// rotated lists the rotated files, oldest first.
func (l *Log) rotated() ([]string, error) {
	dir, base := filepath.Split(l.cfg.File)
	if dir == "" {
		dir = "."
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: list rotated files: %w", err)
	}
	var out []string
	for _, e := range ents {
		suffix, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok || len(suffix) != 12 {
			continue
		}
		if _, err := strconv.ParseUint(suffix, 10, 64); err != nil {
			continue
		}
		out = append(out, filepath.Join(dir, e.Name()))
	}
	sort.Strings(out)
	return out, nil
}

// Record queues r's line. It waits while the queue is full.
func (l *Log) Record(r *Record) error {
	if r.Agent == "" {
		r.Agent = l.cfg.Agent
	}
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	b, err := r.marshal()
	if err != nil {
		return err
	}
	// Close waits for the Records in progress: none is lost between the
	// writer's last look at the queue and its exit.
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	select {
	case l.q <- b:
		return nil
	case <-l.stopped:
		return ErrClosed
	default:
	}
	l.waits.Add(1)
	select {
	case l.full <- struct{}{}:
	default:
	}
	now := time.Now().UnixNano()
	if last := l.waitLogged.Load(); now-last > int64(10*time.Second) && l.waitLogged.CompareAndSwap(last, now) {
		l.log.Warn("audit queue full: requests wait for the audit writer (is the disk slow?)", "queue", cap(l.q), "waits_so_far", l.waits.Load())
	}
	select {
	case l.q <- b:
		return nil
	case <-l.stopped:
		return ErrClosed
	}
}

// FullArguments reports whether lines carry the arguments themselves.
func (l *Log) FullArguments() bool { return l.cfg.FullArguments }

// Stats are the trail's counters.
type Stats struct {
	Written, Lost, QueueWaits int64
}

func (l *Log) Stats() Stats {
	return Stats{Written: l.written.Load(), Lost: l.lost.Load(), QueueWaits: l.waits.Load()}
}

// Close writes the lines queued, fsyncs and closes the file. Records
// after Close fail with ErrClosed.
func (l *Log) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		close(l.closing)
	})
	<-l.stopped
	return nil
}

func (l *Log) run() {
	defer close(l.stopped)
	tick := time.NewTicker(l.cfg.SyncEvery)
	defer tick.Stop()
	var buf []byte
	batch := make([][]byte, 0, 64)
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	defer hold.Stop()
	for {
		select {
		case b := <-l.q:
			batch = append(batch[:0], b)
			// Lines come in bursts: wait a moment, while Records queue
			// without waking this goroutine, then take what else is
			// waiting: one write for all of it. A full queue and Close cut
			// the wait short.
			if l.cfg.Hold > 0 {
				hold.Reset(l.cfg.Hold)
				select {
				case <-hold.C:
				case <-l.full:
					hold.Stop()
				case <-l.closing:
					hold.Stop()
				}
			}
		more:
			for len(batch) < 1024 {
				select {
				case b := <-l.q:
					batch = append(batch, b)
				default:
					break more
				}
			}
			buf = l.write(buf[:0], batch)
		case <-tick.C:
			l.sync()
		case <-l.closing:
			for {
				select {
				case b := <-l.q:
					buf = l.write(buf[:0], [][]byte{b})
					continue
				default:
				}
				break
			}
			l.sync()
			if err := l.f.Close(); err != nil {
				l.log.Error("audit: close", "file", l.cfg.File, "err", err)
			}
			return
		}
	}
}

// write chains and writes a batch of record middles, rotating as needed.
// Lines a failed write lost stay in the chain (their seq and hash are
// used): Verify then shows the gap where they were lost.
func (l *Log) write(buf []byte, batch [][]byte) []byte {
	n := 0
	flush := func() {
		if len(buf) == 0 {
			return
		}
		if _, err := l.f.Write(buf); err != nil {
			l.lost.Add(int64(n))
			l.log.Error("audit: write failed; lines lost", "file", l.cfg.File, "lines", n, "err", err)
		} else {
			l.written.Add(int64(n))
			l.size += int64(len(buf))
		}
		l.dirty = true
		buf, n = buf[:0], 0
	}
	for _, mid := range batch {
		start := len(buf)
		var h string
		buf, h = appendLine(buf, l.seq+1, mid, l.prev)
		lineLen := int64(len(buf) - start)
		if pending := l.size + int64(start); pending > 0 && pending+lineLen > l.cfg.MaxSize {
			line := append([]byte(nil), buf[start:]...)
			buf = buf[:start]
			flush()
			l.rotate()
			buf = append(buf, line...)
		}
		l.seq, l.prev = l.seq+1, h
		if l.firstSeq == 0 {
			l.firstSeq = l.seq
		}
		n++
	}
	flush()
	return buf
}

// rotate renames the current file after its first line's seq, opens a
// new one and removes rotated files beyond MaxFiles.
func (l *Log) rotate() {
	l.sync()
	if err := l.f.Close(); err != nil {
		l.log.Error("audit: close before rotation", "file", l.cfg.File, "err", err)
	}
	name := fmt.Sprintf("%s.%012d", l.cfg.File, l.firstSeq)
	if err := os.Rename(l.cfg.File, name); err != nil {
		l.log.Error("audit: rotate", "file", l.cfg.File, "err", err)
	}
	f, err := os.OpenFile(l.cfg.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		// Keep writing to the renamed file rather than lose lines.
		l.log.Error("audit: open after rotation; writing on to the rotated file", "file", l.cfg.File, "err", err)
		f, err = os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			l.log.Error("audit: reopen", "file", name, "err", err)
			return
		}
		l.f = f
		return
	}
	l.f, l.size, l.firstSeq = f, 0, 0
	if old, err := l.rotated(); err == nil && len(old) > l.cfg.MaxFiles {
		for _, o := range old[:len(old)-l.cfg.MaxFiles] {
			if err := os.Remove(o); err != nil {
				l.log.Warn("audit: remove old rotated file", "file", o, "err", err)
			}
		}
	}
}

func (l *Log) sync() {
	if !l.dirty {
		return
	}
	if err := l.f.Sync(); err != nil {
		l.log.Error("audit: fsync", "file", l.cfg.File, "err", err)
	}
	l.dirty = false
}

// parsed is what a line says of its place in the chain.
type parsed struct {
	Seq  uint64
	Prev string
	Hash string
}

// parseLine checks one line (without its newline): its hash matches its
// content, it is a JSON object with seq and prev.
func parseLine(line []byte) (parsed, error) {
	var p parsed
	if len(line) < hashSuffixLen || !bytes.HasPrefix(line[len(line)-hashSuffixLen:], []byte(`,"hash":"`)) ||
		!bytes.HasSuffix(line, []byte(`"}`)) {
		return p, errors.New(`no "hash" at its end: not an audit line, or cut short`)
	}
	body := line[:len(line)-hashSuffixLen]
	p.Hash = string(line[len(line)-hashSuffixLen+len(`,"hash":"`) : len(line)-2])
	if !isHex64(p.Hash) {
		return p, errors.New(`"hash" is not 64 hex digits`)
	}
	if got := sum(body); got != p.Hash {
		return p, errors.New("its content does not match its hash: the line was edited")
	}
	var v struct {
		Seq  *uint64 `json:"seq"`
		Prev *string `json:"prev"`
	}
	if err := json.Unmarshal(line, &v); err != nil {
		return p, fmt.Errorf("not valid JSON: %w", err)
	}
	if v.Seq == nil || v.Prev == nil || !isHex64(*v.Prev) {
		return p, errors.New(`"seq" or "prev" missing or malformed`)
	}
	p.Seq, p.Prev = *v.Seq, *v.Prev
	return p, nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// firstLine returns the first line of a file (without its newline).
func firstLine(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	line, err := br.ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("audit: read %s: %w", path, err)
	}
	return bytes.TrimSuffix(line, []byte("\n")), nil
}

// lastLine returns the last complete line of a file (nil if none),
// reading backwards from its end.
func lastLine(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	size := fi.Size()
	for chunk := int64(64 << 10); ; chunk *= 2 {
		off := max(size-chunk, 0)
		buf := make([]byte, size-off)
		if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("audit: read %s: %w", path, err)
		}
		// Only complete lines count: a line cut by a crash is left for
		// Verify to report.
		end := bytes.LastIndexByte(buf, '\n')
		if end < 0 {
			if off == 0 {
				return nil, nil
			}
			continue
		}
		start := bytes.LastIndexByte(buf[:end], '\n')
		if start >= 0 {
			return buf[start+1 : end], nil
		}
		if off == 0 {
			return buf[:end], nil
		}
	}
}
