package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// ChainError is the first line of a trail that is not as written: edited,
// cut short, or out of its place in the chain (a line before it removed,
// lines inserted or reordered).
type ChainError struct {
	File   string
	Line   int // 1-based
	Reason string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
}

// Summary describes an intact trail.
type Summary struct {
	Files    []string // in the order verified
	Lines    int
	FirstSeq uint64
	LastSeq  uint64
	LastHash string
	// MidChain says the first line does not start the trail (Genesis):
	// older files were rotated away or not given. Lines removed from the
	// very start of what was given cannot be told from that.
	MidChain bool
}

// Verifier checks lines one at a time, in order: what Verify runs over
// files, and what a fuzz test drives directly.
type Verifier struct {
	n        int
	seq      uint64
	prev     string
	first    uint64
	midChain bool
}

// Line checks the next line (without its newline).
func (v *Verifier) Line(line []byte) error {
	p, err := parseLine(line)
	if err != nil {
		return err
	}
	switch {
	case v.n == 0 && p.Prev == Genesis && p.Seq != 1:
		return fmt.Errorf("seq %d starts the trail (prev is the genesis value) but the first line has seq 1", p.Seq)
	case v.n == 0:
		v.first, v.midChain = p.Seq, p.Prev != Genesis
	case p.Prev != v.prev:
		return fmt.Errorf("its prev does not match the hash of the line before it (seq %d): a line was removed here, or lines were inserted or reordered", v.seq)
	case p.Seq != v.seq+1:
		return fmt.Errorf("seq %d follows seq %d: lines were removed or reordered", p.Seq, v.seq)
	}
	v.n++
	v.seq, v.prev = p.Seq, p.Hash
	return nil
}

// Verify checks the lines of files as one trail. Files are taken in the
// order of their first line's seq (so a shell glob of the current and the
// rotated files works), the given order breaking ties. It returns a
// *ChainError for the first line that is not as written.
func Verify(files ...string) (Summary, error) {
	if len(files) == 0 {
		return Summary{}, errors.New("audit: no files to verify")
	}
	type ordered struct {
		name  string
		first uint64
	}
	order := make([]ordered, 0, len(files))
	for _, f := range files {
		o := ordered{name: f, first: ^uint64(0)}
		if line, err := firstLine(f); err != nil {
			return Summary{}, err
		} else if p, err := parseLine(line); err == nil {
			o.first = p.Seq
		}
		order = append(order, o)
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].first < order[j].first })
	var v Verifier
	var s Summary
	for _, o := range order {
		s.Files = append(s.Files, o.name)
		if err := v.file(o.name); err != nil {
			return s, err
		}
	}
	s.Lines, s.FirstSeq, s.LastSeq, s.LastHash, s.MidChain = v.n, v.first, v.seq, v.prev, v.midChain
	return s, nil
}

func (v *Verifier) file(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(line) == 0 && errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("audit: read %s: %w", name, err)
		}
		if !bytes.HasSuffix(line, []byte("\n")) {
			return &ChainError{File: name, Line: n, Reason: "the last line has no end of line: cut short"}
		}
		if lerr := v.Line(line[:len(line)-1]); lerr != nil {
			return &ChainError{File: name, Line: n, Reason: lerr.Error()}
		}
	}
}
