package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"
)

// Canonical renders a JSON value canonically: object members sorted by
// name (bytewise, UTF-8; of a repeated name the last one kept, as
// encoding/json decodes it), no insignificant whitespace, strings with
// only '"', '\' and control characters escaped (as RFC 8785 does), numbers
// exactly as sent. Two encodings of the same arguments — member order,
// spacing, escapes — hash alike. It scans raw once per nesting level and
// decodes nothing but escaped strings.
func Canonical(raw []byte) ([]byte, error) {
	c := canon{raw: raw}
	i := skipWS(raw, 0)
	end, err := c.value(i, 0)
	if err != nil {
		return nil, fmt.Errorf("audit: canonical JSON: %w", err)
	}
	if skipWS(raw, end) != len(raw) {
		return nil, errors.New("audit: canonical JSON: data after the value")
	}
	return c.out, nil
}

// HashArguments is the hex SHA-256 of Canonical(raw).
func HashArguments(raw []byte) (string, error) {
	c, err := Canonical(raw)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(c)
	return hex.EncodeToString(sum[:]), nil
}

const maxDepth = 1000

type canon struct {
	raw []byte
	out []byte
}

type member struct {
	key        []byte // decoded
	start, seq int    // value start; position, for a stable order
}

var errSyntax = errors.New("invalid JSON")

// value appends the canonical form of the value at raw[i] and returns the
// index after it.
func (c *canon) value(i, depth int) (int, error) {
	raw := c.raw
	if i >= len(raw) {
		return 0, errSyntax
	}
	if depth > maxDepth {
		return 0, errors.New("nested too deeply")
	}
	switch b := raw[i]; {
	case b == '{':
		var ms []member
		j := skipWS(raw, i+1)
		if j < len(raw) && raw[j] == '}' {
			c.out = append(c.out, "{}"...)
			return j + 1, nil
		}
		for {
			if j >= len(raw) || raw[j] != '"' {
				return 0, errSyntax
			}
			ke, key, err := readString(raw, j)
			if err != nil {
				return 0, err
			}
			j = skipWS(raw, ke)
			if j >= len(raw) || raw[j] != ':' {
				return 0, errSyntax
			}
			vs := skipWS(raw, j+1)
			ve, err := skipValue(raw, vs, depth+1)
			if err != nil {
				return 0, err
			}
			ms = append(ms, member{key: key, start: vs, seq: len(ms)})
			j = skipWS(raw, ve)
			if j >= len(raw) {
				return 0, errSyntax
			}
			if raw[j] == '}' {
				break
			}
			if raw[j] != ',' {
				return 0, errSyntax
			}
			j = skipWS(raw, j+1)
		}
		slices.SortStableFunc(ms, func(a, b member) int { return bytes.Compare(a.key, b.key) })
		c.out = append(c.out, '{')
		first := true
		for k, m := range ms {
			if k+1 < len(ms) && bytes.Equal(ms[k+1].key, m.key) {
				continue // a later member of the same name wins
			}
			if !first {
				c.out = append(c.out, ',')
			}
			first = false
			c.out = AppendString(c.out, m.key)
			c.out = append(c.out, ':')
			if _, err := c.value(m.start, depth+1); err != nil {
				return 0, err
			}
		}
		c.out = append(c.out, '}')
		return j + 1, nil
	case b == '[':
		c.out = append(c.out, '[')
		j := skipWS(raw, i+1)
		if j < len(raw) && raw[j] == ']' {
			c.out = append(c.out, ']')
			return j + 1, nil
		}
		for {
			end, err := c.value(j, depth+1)
			if err != nil {
				return 0, err
			}
			j = skipWS(raw, end)
			if j >= len(raw) {
				return 0, errSyntax
			}
			if raw[j] == ']' {
				c.out = append(c.out, ']')
				return j + 1, nil
			}
			if raw[j] != ',' {
				return 0, errSyntax
			}
			c.out = append(c.out, ',')
			j = skipWS(raw, j+1)
		}
	case b == '"':
		end, s, err := readString(raw, i)
		if err != nil {
			return 0, err
		}
		c.out = AppendString(c.out, s)
		return end, nil
	default:
		end, err := scalar(raw, i)
		if err != nil {
			return 0, err
		}
		c.out = append(c.out, raw[i:end]...)
		return end, nil
	}
}

// skipValue returns the index after the value at raw[i].
func skipValue(raw []byte, i, depth int) (int, error) {
	if i >= len(raw) {
		return 0, errSyntax
	}
	if depth > maxDepth {
		return 0, errors.New("nested too deeply")
	}
	switch raw[i] {
	case '"':
		end, _, err := readString(raw, i)
		return end, err
	case '{', '[':
		closing := byte('}')
		if raw[i] == '[' {
			closing = ']'
		}
		j := skipWS(raw, i+1)
		if j < len(raw) && raw[j] == closing {
			return j + 1, nil
		}
		for {
			if closing == '}' {
				if j >= len(raw) || raw[j] != '"' {
					return 0, errSyntax
				}
				ke, _, err := readString(raw, j)
				if err != nil {
					return 0, err
				}
				j = skipWS(raw, ke)
				if j >= len(raw) || raw[j] != ':' {
					return 0, errSyntax
				}
				j = skipWS(raw, j+1)
			}
			end, err := skipValue(raw, j, depth+1)
			if err != nil {
				return 0, err
			}
			j = skipWS(raw, end)
			if j >= len(raw) {
				return 0, errSyntax
			}
			if raw[j] == closing {
				return j + 1, nil
			}
			if raw[j] != ',' {
				return 0, errSyntax
			}
			j = skipWS(raw, j+1)
		}
	}
	return scalar(raw, i)
}

// scalar returns the index after the literal or number at raw[i].
func scalar(raw []byte, i int) (int, error) {
	end := scalarEnd(raw, i)
	switch lit := raw[i:end]; string(lit) {
	case "true", "false", "null":
	default:
		if len(lit) == 0 || !json.Valid(lit) {
			return 0, errSyntax
		}
	}
	return end, nil
}

func scalarEnd(raw []byte, i int) int {
	j := i
	for j < len(raw) {
		switch raw[j] {
		case ',', '}', ']', ' ', '\t', '\r', '\n', '"', '{', '[', ':':
			return j
		}
		j++
	}
	return j
}

func skipWS(raw []byte, i int) int {
	for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\r' || raw[i] == '\n') {
		i++
	}
	return i
}

// readString returns the index after the string at raw[i] and its
// decoded bytes (aliasing raw when it has no escapes).
func readString(raw []byte, i int) (int, []byte, error) {
	escaped := false
	for j := i + 1; j < len(raw); j++ {
		switch c := raw[j]; {
		case c == '\\':
			escaped = true
			j++
		case c == '"':
			s := raw[i+1 : j]
			if !escaped {
				if !utf8.Valid(s) {
					return 0, nil, errors.New("invalid UTF-8 in a string")
				}
				return j + 1, s, nil
			}
			var v string
			if err := json.Unmarshal(raw[i:j+1], &v); err != nil {
				return 0, nil, errSyntax
			}
			return j + 1, []byte(v), nil
		case c < 0x20:
			return 0, nil, errSyntax
		}
	}
	return 0, nil, errSyntax
}

// AppendString appends s as a JSON string, escaping only '"', '\' and
// control characters (RFC 8785's rule).
func AppendString(dst, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			const hexDigits = "0123456789abcdef"
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
