package mcpproxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Tool pinning (a rug-pull guard). For a server with Policy.Pin the agent
// hashes each tool's definition as tools/list shows it, the first time it
// sees the tool, into the pin file (Options.PinFile, JSON, mode 0600). A
// tool whose definition later differs from its pin is left out of
// tools/list and its calls are refused (reason tool_changed); the new
// definition is recorded as the entry's "pending" one and the change is
// logged with the fields that changed. ApprovePin (mcptun tools approve)
// makes the pending definition the pin; the agent notices the file
// changed (its modification time and size, checked on every use) and lets
// the tool through without a restart. Editing the file by hand works the
// same way.
//
// The definition hashed is the tool's name, description, inputSchema,
// outputSchema and annotations, each re-encoded canonically (objects with
// sorted keys, no insignificant space), so a server that merely reorders
// keys does not trip the guard. title, icons and _meta are not pinned.
// A tool is judged by the last definition the agent saw of it; one it has
// not seen since it started (a call without a list first) is judged by
// its pin alone, and passes.

// pinnedFields are the members of a tool definition that are pinned.
var pinnedFields = []string{"name", "description", "inputSchema", "outputSchema", "annotations"}

// PinFile is the pin file's content.
type PinFile struct {
	Version int `json:"version"`
	// Servers maps a server name to its tools by name.
	Servers map[string]map[string]*Pin `json:"servers"`
}

// Pin is one tool's pinned definition.
type Pin struct {
	SHA256 string `json:"sha256"`
	// Fields holds the hash of each pinned field present, to tell what
	// changed.
	Fields   map[string]string `json:"fields"`
	PinnedAt time.Time         `json:"pinned_at"`
	// Pending is the changed definition last seen, waiting for approval.
	Pending *PinDef `json:"pending,omitempty"`
}

// PinDef is a definition seen but not (yet) pinned.
type PinDef struct {
	SHA256  string            `json:"sha256"`
	Fields  map[string]string `json:"fields"`
	SeenAt  time.Time         `json:"seen_at"`
	Changed []string          `json:"changed"`
}

// pinStore is the agent's view of the pin file.
type pinStore struct {
	path string
	log  *slog.Logger

	mu    sync.Mutex
	stamp fileStamp
	file  PinFile
	// seen is the hash of the definition last seen of each server's tool.
	seen map[string]map[string]string
	// dirty says file has changes not yet written (flush).
	dirty bool
}

// fileStamp tells whether the pin file changed: its identity (every
// write renames a new file over it), modification time and size.
type fileStamp struct {
	fi fs.FileInfo
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{fi: fi}
}

func (a fileStamp) same(b fileStamp) bool {
	if a.fi == nil || b.fi == nil {
		return a.fi == nil && b.fi == nil
	}
	return os.SameFile(a.fi, b.fi) && a.fi.ModTime().Equal(b.fi.ModTime()) && a.fi.Size() == b.fi.Size()
}

func newPinStore(path string, log *slog.Logger) (*pinStore, error) {
	s := &pinStore{path: path, log: log, seen: map[string]map[string]string{}}
	f, err := ReadPinFile(path)
	if err != nil {
		return nil, err
	}
	s.file, s.stamp = f, stampOf(path)
	return s, nil
}

// ReadPinFile reads a pin file; a missing one is empty.
func ReadPinFile(path string) (PinFile, error) {
	f := PinFile{Version: 1, Servers: map[string]map[string]*Pin{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("pin file: %w", err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("pin file %s: %w", path, err)
	}
	if f.Servers == nil {
		f.Servers = map[string]map[string]*Pin{}
	}
	return f, nil
}

// WritePinFile replaces the pin file atomically (a new file renamed over
// it), mode 0600.
func WritePinFile(path string, f PinFile) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("pin file: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pin file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("pin file: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("pin file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("pin file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("pin file: %w", err)
	}
	return nil
}

// reloadLocked re-reads the file if it changed since it was last read.
func (s *pinStore) reloadLocked() {
	st := stampOf(s.path)
	if st.same(s.stamp) {
		return
	}
	f, err := ReadPinFile(s.path)
	if err != nil {
		// Keep what we have: an unreadable file must not unpin anything.
		s.log.Error("cannot re-read the pin file; keeping the pins read before", "err", err)
		return
	}
	s.file, s.stamp = f, st
}

// flush writes what observe recorded: once per list, not per tool.
func (s *pinStore) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirty {
		s.saveLocked()
	}
}

func (s *pinStore) saveLocked() {
	s.dirty = false
	if err := WritePinFile(s.path, s.file); err != nil {
		s.log.Error("cannot write the pin file", "err", err)
		return
	}
	s.stamp = stampOf(s.path)
}

// observe records the definition def (a tool object from tools/list) of
// server's tool name and reports whether it may be shown: it matches its
// pin, or is new (and is pinned now).
func (s *pinStore) observe(server, name string, def []byte) bool {
	sum, fields, err := canonicalTool(def)
	if err != nil {
		s.log.Warn("tool definition unreadable; withheld", "server", server, "tool", name, "err", err)
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reloadLocked()
	if s.seen[server] == nil {
		s.seen[server] = map[string]string{}
	}
	s.seen[server][name] = sum
	tools := s.file.Servers[server]
	if tools == nil {
		tools = map[string]*Pin{}
		s.file.Servers[server] = tools
	}
	pin := tools[name]
	now := time.Now().UTC()
	switch {
	case pin == nil:
		tools[name] = &Pin{SHA256: sum, Fields: fields, PinnedAt: now}
		s.log.Info("tool pinned on first sight", "server", server, "tool", name, "sha256", sum)
		s.dirty = true
		return true
	case pin.SHA256 == sum:
		if pin.Pending != nil {
			pin.Pending = nil // the server went back to the pinned definition
			s.dirty = true
		}
		return true
	case pin.Pending == nil || pin.Pending.SHA256 != sum:
		changed := changedFields(pin.Fields, fields)
		pin.Pending = &PinDef{SHA256: sum, Fields: fields, SeenAt: now, Changed: changed}
		s.log.Warn("tool definition changed since it was pinned; withheld until approved",
			"server", server, "tool", name, "changed", changed, "pinned_sha256", pin.SHA256, "new_sha256", sum,
			"approve", fmt.Sprintf("mcptun tools approve %s %s", server, name))
		s.dirty = true
	}
	return false
}

// changed reports whether server's tool was last seen with a definition
// other than its pin.
func (s *pinStore) changed(server, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reloadLocked()
	sum, ok := s.seen[server][name]
	if !ok {
		return false
	}
	pin := s.file.Servers[server][name]
	return pin != nil && pin.SHA256 != sum
}

// canonicalTool hashes the pinned fields of a tool definition.
func canonicalTool(def []byte) (sum string, fields map[string]string, err error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(def, &raw); err != nil {
		return "", nil, err
	}
	canon := map[string]any{}
	fields = map[string]string{}
	for _, k := range pinnedFields {
		v, ok := raw[k]
		if !ok {
			continue
		}
		d := json.NewDecoder(bytes.NewReader(v))
		d.UseNumber()
		var x any
		if err := d.Decode(&x); err != nil {
			return "", nil, fmt.Errorf("%s: %w", k, err)
		}
		b, err := json.Marshal(x) // map keys sorted
		if err != nil {
			return "", nil, fmt.Errorf("%s: %w", k, err)
		}
		canon[k] = json.RawMessage(b)
		h := sha256.Sum256(b)
		fields[k] = hex.EncodeToString(h[:])
	}
	b, err := json.Marshal(canon)
	if err != nil {
		return "", nil, err
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:]), fields, nil
}

// changedFields names the pinned fields that differ (added, removed or
// changed).
func changedFields(old, cur map[string]string) []string {
	var out []string
	for _, k := range pinnedFields {
		if old[k] != cur[k] {
			out = append(out, k)
		}
	}
	return out
}

// ApprovePin makes the pending definition of server's tool its pin, in
// the pin file at path. The running agent picks it up on its next use of
// the file.
func ApprovePin(path, server, tool string) (PinDef, error) {
	f, err := ReadPinFile(path)
	if err != nil {
		return PinDef{}, err
	}
	pin := f.Servers[server][tool]
	switch {
	case pin == nil:
		return PinDef{}, fmt.Errorf("pin file %s: no pin for tool %q of server %q", path, tool, server)
	case pin.Pending == nil:
		return PinDef{}, fmt.Errorf("pin file %s: tool %q of server %q has no change waiting for approval", path, tool, server)
	}
	d := *pin.Pending
	pin.SHA256, pin.Fields, pin.PinnedAt, pin.Pending = d.SHA256, d.Fields, time.Now().UTC(), nil
	return d, WritePinFile(path, f)
}

// PinInfo is one line of ListPins.
type PinInfo struct {
	Server, Tool string
	SHA256       string
	PinnedAt     time.Time
	Pending      *PinDef
}

// ListPins lists the pins in the file at path, by server and tool.
func ListPins(path string) ([]PinInfo, error) {
	f, err := ReadPinFile(path)
	if err != nil {
		return nil, err
	}
	var out []PinInfo
	for server, tools := range f.Servers {
		for tool, p := range tools {
			if p == nil {
				continue
			}
			out = append(out, PinInfo{Server: server, Tool: tool, SHA256: p.SHA256, PinnedAt: p.PinnedAt, Pending: p.Pending})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Server < out[j].Server || out[i].Server == out[j].Server && out[i].Tool < out[j].Tool
	})
	return out, nil
}
