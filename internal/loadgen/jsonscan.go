package loadgen

import (
	"bytes"
	"errors"
)

// A small scanner for the few top-level members the generator reads from a
// JSON-RPC answer. encoding/json validates and walks the whole message
// twice, which for a large echoed payload costs milliseconds per answer on
// the CPU the system under test needs; this scanner jumps over string
// contents with bytes.IndexByte. It is lenient inside values it skips, but
// rejects anything that is not an object of string keys.

var errNotObject = errors.New("not a JSON object")

// scanObject calls fn with each member of the JSON object b: the key as it
// appears between the quotes, and the value's raw bytes.
func scanObject(b []byte, fn func(key, value []byte)) error {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errNotObject
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		if skipSpace(b, i+1) != len(b) {
			return errNotObject
		}
		return nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return errNotObject
		}
		end, ok := skipString(b, i)
		if !ok {
			return errNotObject
		}
		key := b[i+1 : end-1]
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return errNotObject
		}
		i = skipSpace(b, i+1)
		end, ok = skipValue(b, i)
		if !ok {
			return errNotObject
		}
		fn(key, b[i:end])
		i = skipSpace(b, end)
		if i >= len(b) {
			return errNotObject
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			if skipSpace(b, i+1) != len(b) {
				return errNotObject
			}
			return nil
		default:
			return errNotObject
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) (int, bool) {
	i++
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return 0, false
		}
		q := i + j
		// The quote is escaped if an odd number of backslashes precede it.
		n := 0
		for k := q - 1; k >= i && b[k] == '\\'; k-- {
			n++
		}
		if n%2 == 0 {
			return q + 1, true
		}
		i = q + 1
	}
}

// skipValue returns the index just past the value starting at b[i].
// Containers are matched by bracket depth, strings inside them skipped whole.
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				end, ok := skipString(b, i)
				if !ok {
					return 0, false
				}
				i = end
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			}
			i++
		}
		return 0, false
	case ',', '}', ']', ':':
		return 0, false
	}
	start := i
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r', '"', '{', '[', ':':
			return i, i > start
		}
		i++
	}
	return i, i > start
}

// answer is what the generator needs to know about one JSON-RPC message.
type answer struct {
	id       []byte // raw id token
	isMethod bool   // a request or notification from the server
	result   []byte // raw result, nil when absent or null
	errObj   []byte // raw error, nil when absent or null
}

func scanAnswer(msg []byte) (answer, error) {
	var a answer
	err := scanObject(msg, func(key, value []byte) {
		switch string(key) {
		case "id":
			a.id = value
		case "method":
			a.isMethod = len(value) > 2 && value[0] == '"'
		case "result":
			a.result = nonNull(value)
		case "error":
			a.errObj = nonNull(value)
		}
	})
	return a, err
}

func nonNull(v []byte) []byte {
	if string(v) == "null" {
		return nil
	}
	return v
}

// resultIsError reports whether a tools/call result has "isError": true.
func resultIsError(result []byte) bool {
	isErr := false
	_ = scanObject(result, func(key, value []byte) {
		if string(key) == "isError" {
			isErr = string(value) == "true"
		}
	})
	return isErr
}
