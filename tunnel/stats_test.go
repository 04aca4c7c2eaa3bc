package tunnel

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestHelloSoftware: the build an agent names reaches the relay; one a
// status page could not show as it is refuses the hello.
func TestHelloSoftware(t *testing.T) {
	cases := []struct {
		software string
		ok       bool
	}{
		{"", true},
		{"mcptun v1.4.0", true},
		{"mcptun dev\n<script>", false},
		{"mcptun \u00e9", false},
		{string(make([]byte, maxSoftwareLen+1)), false},
	}
	for _, tc := range cases {
		b, err := json.Marshal(hello{Type: typeHello, Version: ProtocolVersion, Agent: "dc1", Token: "t", Software: tc.software})
		require.NoError(t, err)
		h, err := decodeHello(b)
		if tc.ok {
			require.NoError(t, err, "%q", tc.software)
			require.Equal(t, tc.software, h.Software)
			continue
		}
		var ref *RefusedError
		require.ErrorAs(t, err, &ref, "%q", tc.software)
		require.Equal(t, CodeBadHello, ref.Code)
	}
}
