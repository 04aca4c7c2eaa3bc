// Package glob matches the names of MCP tools, prompts and resources
// against the patterns of the agent's policy and the relay's allow lists.
package glob

import (
	"errors"
	"unicode/utf8"
)

// Policy globs (tools.allow, prompts.deny, resources.allow, the relay's
// agent/server/tool patterns...) match names exactly as the server spelled
// them: byte for byte, no case folding, no Unicode normalisation. Like
// path.Match, '*' matches any run of characters (none too) and '?' exactly
// one character (a UTF-8 code point); unlike it, '*' also matches '/', so
// "file:///docs/*" covers a whole tree of resource URIs, and '[' is an
// ordinary character. A backslash makes the next character literal ("\*"
// matches a '*').

// Match reports whether name matches pattern (see above). It runs in
// O(len(pattern)·len(name)) at worst: a '*' only ever backtracks to the
// latest one.
func Match(pattern, name string) bool {
	px, nx := 0, 0
	starPx, starNx := -1, -1
	for px < len(pattern) || nx < len(name) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				starPx, starNx = px, nx+1
				px++
				continue
			case '?':
				if nx < len(name) {
					_, w := utf8.DecodeRuneInString(name[nx:])
					px++
					nx += w
					continue
				}
			case '\\':
				if px+1 < len(pattern) && nx < len(name) && pattern[px+1] == name[nx] {
					px += 2
					nx++
					continue
				}
			default:
				if nx < len(name) && name[nx] == c {
					px++
					nx++
					continue
				}
			}
		}
		if starNx > 0 && starNx <= len(name) {
			px, nx = starPx, starNx
			continue
		}
		return false
	}
	return true
}

// MatchAny reports whether name matches one of patterns.
func MatchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if Match(p, name) {
			return true
		}
	}
	return false
}

// Check validates a policy glob: not empty, valid UTF-8, no control
// characters, and no backslash at its end (it would escape nothing).
func Check(pattern string) error {
	switch {
	case pattern == "":
		return errors.New("empty pattern (use \"*\" for every name)")
	case !utf8.ValidString(pattern):
		return errors.New("pattern is not valid UTF-8")
	}
	escaped := false
	for _, r := range pattern {
		if r < 0x20 || r == 0x7f {
			return errors.New("pattern contains a control character")
		}
		escaped = !escaped && r == '\\'
	}
	if escaped {
		return errors.New("pattern ends in a lone backslash")
	}
	return nil
}
