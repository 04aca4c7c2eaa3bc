package relay

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestNarrowTools: the tool globs of the patterns covering agent/server,
// or none (the whole server) when one pattern does not name tools.
func TestNarrowTools(t *testing.T) {
	for _, tc := range []struct {
		allow []string
		want  string
	}{
		{[]string{"dc1/*"}, ""},
		{[]string{"dc1/wiki/search_*"}, "search_%2A"},
		{[]string{"dc1/wiki/search_*", "*/wiki/read"}, "search_%2A,read"},
		{[]string{"dc1/wiki/search_*", "dc1/*"}, ""}, // a wider pattern wins: allow lists add up
		{[]string{"dc1/wiki/a,b c"}, "a%2Cb+c"},
		{[]string{"dc2/wiki/x", "dc1/notes/y", "dc1/wiki/z/w"}, "z%2Fw"},
	} {
		c := &Client{Allow: tc.allow}
		require.True(t, c.allowed("dc1", "wiki"), "%q", tc.allow)
		require.Equal(t, tc.want, c.narrowTools("dc1", "wiki"), "%q", tc.allow)
	}
	require.False(t, (&Client{Allow: []string{"dc1/notes/x"}}).allowed("dc1", "wiki"))
}
