package glob

import (
	"path"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"*", "", true},
		{"*", "anything/at all", true},
		{"search", "search", true},
		{"search", "Search", false},         // no case folding
		{"search", "search ", false},        // exact
		{"search_*", "search_docs", true},   // prefix
		{"search_*", "search_", true},       // '*' matches nothing too
		{"search_*", "xsearch_docs", false}, // anchored
		{"*_admin", "drop_admin", true},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"a?c", "aéc", true},                             // '?' is one code point, not one byte
		{"caf\u00e9", "cafe\u0301", false},               // no Unicode normalisation
		{"file:///docs/*", "file:///docs/a/b.txt", true}, // '*' crosses '/'
		{"file:///docs/*", "file:///etc/passwd", false},
		{`\*`, "*", true},
		{`\*`, "a", false},
		{`a\?`, "a?", true},
		{"[ab]", "[ab]", true}, // '[' is literal
		{"[ab]", "a", false},
		{"*a*b*", "xxaxxbxx", true},
		{"*a*b*", "xxbxxaxx", false},
		{"*****************b", strings.Repeat("a", 1000), false}, // no blow-up
	} {
		if got := Match(tc.pattern, tc.name); got != tc.want {
			t.Errorf("Match(%q, %q) = %t, want %t", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		ok      bool
	}{
		{"*", true}, {"search_*", true}, {`a\*`, true}, {`a\\`, true},
		{"", false}, {`a\`, false}, {"a\nb", false}, {"\xff", false},
	} {
		if err := Check(tc.pattern); (err == nil) != tc.ok {
			t.Errorf("Check(%q) = %v, want ok %t", tc.pattern, err, tc.ok)
		}
	}
}

// FuzzMatch checks Match against path.Match where their rules agree
// (no '/', '[' or '\\'; valid UTF-8), and that it never panics.
func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"a*b", "axxb"}, {"?é", "xé"}, {"*", ""}, {`\*x`, "*x"}, {"**a?", "bba"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		got := Match(pattern, name)
		if strings.ContainsAny(pattern+name, "/[\\") || !utf8.ValidString(pattern) || !utf8.ValidString(name) {
			return
		}
		want, err := path.Match(pattern, name)
		if err != nil {
			return
		}
		if got != want {
			t.Fatalf("Match(%q, %q) = %t, path.Match says %t", pattern, name, got, want)
		}
	})
}
