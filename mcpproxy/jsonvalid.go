package mcpproxy

// validJSON reports whether data is exactly one JSON value with optional
// whitespace around it: what json.Valid reports, including its nesting
// limit, and like it without checking that strings are valid UTF-8.
//
// Why not json.Valid: the bridge validates every message both ways, and
// encoding/json's scanner calls a state function per byte; in a profile of
// Peek it took 45% of the time. This one loops over string bytes, which
// are most of a message, and keeps open containers in a bit stack.
// FuzzValidJSON holds it to json.Valid.
func validJSON(data []byte) bool {
	var st containerStack
	i := skipWS(data, 0)
	for {
		// A value starts at i.
		if i >= len(data) {
			return false
		}
		switch c := data[i]; c {
		case '{', '[':
			if !st.push(c == '{') {
				return false
			}
			i = skipWS(data, i+1)
			if i < len(data) && data[i] == c+2 { // '}' or ']'
				st.pop()
				i++
				break
			}
			if c == '{' {
				if i = objectKey(data, i); i < 0 {
					return false
				}
			}
			continue
		case '"':
			if i = scanString(data, i); i < 0 {
				return false
			}
		case 't':
			if i = literal(data, i, "true"); i < 0 {
				return false
			}
		case 'f':
			if i = literal(data, i, "false"); i < 0 {
				return false
			}
		case 'n':
			if i = literal(data, i, "null"); i < 0 {
				return false
			}
		default:
			if i = scanNumber(data, i); i < 0 {
				return false
			}
		}
		// A value ended just before i: close containers until one goes on.
		for {
			i = skipWS(data, i)
			if st.depth == 0 {
				return i == len(data)
			}
			if i >= len(data) {
				return false
			}
			c := data[i]
			if c == ',' {
				i = skipWS(data, i+1)
				if st.inObject() {
					if i = objectKey(data, i); i < 0 {
						return false
					}
				}
				break
			}
			if (c == '}') != st.inObject() || c != '}' && c != ']' {
				return false
			}
			st.pop()
			i++
		}
	}
}

// objectKey scans `"key"` and the colon after it, starting at data[i], and
// returns the index of the value after them, or -1.
func objectKey(data []byte, i int) int {
	if i >= len(data) || data[i] != '"' {
		return -1
	}
	if i = scanString(data, i); i < 0 {
		return -1
	}
	i = skipWS(data, i)
	if i >= len(data) || data[i] != ':' {
		return -1
	}
	return skipWS(data, i+1)
}

// plainStringByte marks the bytes a JSON string holds as they are: all but
// control characters, the quote and the backslash.
var plainStringByte = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanString returns the index just past the string starting at data[i]
// (a quote), or -1 if it is not a valid JSON string.
func scanString(data []byte, i int) int {
	i++
	for i < len(data) {
		c := data[i]
		if plainStringByte[c] {
			i++
			continue
		}
		switch c {
		case '"':
			return i + 1
		case '\\':
			if i+1 >= len(data) {
				return -1
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) {
					return -1
				}
				for _, h := range data[i+2 : i+6] {
					if !isHex(h) {
						return -1
					}
				}
				i += 6
			default:
				return -1
			}
		default: // a control character
			return -1
		}
	}
	return -1
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// scanNumber returns the index just past the number starting at data[i],
// or -1: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(data []byte, i int) int {
	if i < len(data) && data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && data[i] >= '1' && data[i] <= '9':
		i = digits(data, i)
	default:
		return -1
	}
	if i < len(data) && data[i] == '.' {
		j := digits(data, i+1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		j := digits(data, i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}

func digits(data []byte, i int) int {
	for i < len(data) && data[i] >= '0' && data[i] <= '9' {
		i++
	}
	return i
}

// literal returns the index just past word at data[i], or -1.
func literal(data []byte, i int, word string) int {
	if len(data)-i < len(word) || string(data[i:i+len(word)]) != word {
		return -1
	}
	return i + len(word)
}

// maxNesting is encoding/json's limit on nested arrays and objects.
const maxNesting = 10000

// containerStack records, for each open container, whether it is an
// object. The first 256 levels need no allocation.
type containerStack struct {
	depth int
	bits  [4]uint64
	more  []uint64 // levels 256 and deeper
}

func (s *containerStack) push(object bool) bool {
	if s.depth == maxNesting {
		return false
	}
	w, b := s.depth/64, uint(s.depth%64)
	if w >= len(s.bits) && w-len(s.bits) >= len(s.more) {
		s.more = append(s.more, 0)
	}
	word := s.word(w)
	if object {
		*word |= 1 << b
	} else {
		*word &^= 1 << b
	}
	s.depth++
	return true
}

func (s *containerStack) pop() { s.depth-- }

func (s *containerStack) inObject() bool {
	d := s.depth - 1
	return *s.word(d / 64)&(1<<uint(d%64)) != 0
}

func (s *containerStack) word(w int) *uint64 {
	if w < len(s.bits) {
		return &s.bits[w]
	}
	return &s.more[w-len(s.bits)]
}
