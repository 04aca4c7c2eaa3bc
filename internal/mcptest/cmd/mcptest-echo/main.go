// Command mcptest-echo is a raw stdio MCP server for byte-fidelity tests. It
// never decodes and re-encodes a message: what it writes is what the test
// scripted, byte for byte, and what it read is logged as it came.
//
//   - Every line read from stdin is appended, as is, to the file named by
//     $MCPTEST_ECHO_LOG (if set), before anything is written back.
//   - A request (a message with "method" and "id") whose params carry
//     "reply": [LINE, ...] is answered by writing each LINE to stdout,
//     with "$ID" replaced by the raw bytes of the request's id and "$TOKEN"
//     by those of its params._meta.progressToken. A request without reply
//     gets {"jsonrpc":"2.0","id":$ID,"result":{}}.
//   - Anything else (notifications, responses) is only logged.
//
// It exits when stdin ends.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Stdin, os.Stdout, os.Getenv("MCPTEST_ECHO_LOG")); err != nil {
		fmt.Fprintln(os.Stderr, "mcptest-echo:", err)
		os.Exit(1)
	}
}

type message struct {
	ID     json.RawMessage `json:"id"`
	Method *string         `json:"method"`
	Params struct {
		Reply []string `json:"reply"`
		Meta  struct {
			ProgressToken json.RawMessage `json:"progressToken"`
		} `json:"_meta"`
	} `json:"params"`
}

func run(in io.Reader, out io.Writer, logPath string) error {
	var logf *os.File
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("open log: %w", err)
		}
		defer f.Close()
		logf = f
	}
	br := bufio.NewReader(in)
	bw := bufio.NewWriter(out)
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			if logf != nil {
				if _, err := logf.Write(append(line, '\n')); err != nil {
					return fmt.Errorf("write log: %w", err)
				}
			}
			if err := answer(bw, line); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
	}
}

func answer(bw *bufio.Writer, line []byte) error {
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		fmt.Fprintf(os.Stderr, "mcptest-echo: not JSON, ignored: %v\n", err)
		return nil
	}
	if m.Method == nil || len(m.ID) == 0 {
		return nil
	}
	reply := m.Params.Reply
	if reply == nil {
		reply = []string{`{"jsonrpc":"2.0","id":$ID,"result":{}}`}
	}
	for _, r := range reply {
		b := bytes.ReplaceAll([]byte(r), []byte("$ID"), m.ID)
		b = bytes.ReplaceAll(b, []byte("$TOKEN"), m.Params.Meta.ProgressToken)
		if _, err := bw.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("write stdout: %w", err)
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("write stdout: %w", err)
		}
	}
	return nil
}
