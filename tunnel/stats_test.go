package tunnel

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

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

// TestTunnelStats: both ends see a session's bytes, QUIC its RTT; the
// agent counts reconnects and, in auto mode where UDP finds no relay, the
// fallbacks to TCP.
func TestTunnelStats(t *testing.T) {
	payload := bytes.Repeat([]byte("x"), 100<<10)
	for _, tc := range []struct {
		name        string
		transport   string
		disableQUIC bool
		want        string
		fallbacks   uint64
	}{
		{"quic", TransportQUIC, false, TransportQUIC, 0},
		{"tcp", TransportTCP, false, TransportTCPYamux, 0},
		{"auto-fallback", TransportAuto, true, TransportTCPYamux, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelay(t, ServerConfig{DisableQUIC: tc.disableQUIC})
			cc := agentConfig(t, r.Addr())
			cc.Transport = tc.transport
			cc.QUICTimeout = 200 * time.Millisecond
			m, _ := startMulti(t, MultiConfig{Client: cc, Addresses: []string{r.Addr()}}, "")
			r.waitEvent(t, testAgent+" up")
			got, err := roundTrip(testCtx(t), r, testAgent, payload)
			require.NoError(t, err)
			require.Len(t, got, len(payload))

			rs := r.Stats()
			require.Len(t, rs, 1)
			require.Equal(t, testAgent, rs[0].Agent)
			require.Equal(t, tc.want, rs[0].Transport)
			require.GreaterOrEqual(t, rs[0].BytesSent, uint64(len(payload)))
			require.GreaterOrEqual(t, rs[0].BytesReceived, uint64(len(payload)))
			if tc.want == TransportQUIC {
				require.Positive(t, rs[0].RTT)
			}

			ts := m.Stats()
			require.Len(t, ts, 1)
			require.True(t, ts[0].Connected)
			require.GreaterOrEqual(t, ts[0].BytesReceived, uint64(len(payload)))
			require.Zero(t, ts[0].Reconnects)
			require.Equal(t, tc.fallbacks, ts[0].Fallbacks)

			// The relay restarts on the same address: one reconnect.
			addr := r.Addr()
			require.NoError(t, r.Close())
			r.waitEvent(t, testAgent+" down")
			r2 := startRelay(t, ServerConfig{Listen: addr, DisableQUIC: tc.disableQUIC})
			r2.waitEvent(t, testAgent+" up")
			waitFor(t, "a reconnect counted", func() bool {
				ts := m.Stats()
				return len(ts) == 1 && ts[0].Connected && ts[0].Reconnects == 1
			})
		})
	}
}
