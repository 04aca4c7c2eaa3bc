package relay

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/config"
)

// TestLimitDefaultsMatchConfig: the client connection limits have their
// defaults twice, in relay.yaml's loader (config, whose numbers the README
// and the error messages quote) and here (for a Handler made in code, such
// as the tests'); they must not drift apart.
func TestLimitDefaultsMatchConfig(t *testing.T) {
	for _, tc := range []struct {
		key           string
		config, relay time.Duration
	}{
		{"http.header_timeout", config.DefaultHeaderTimeout, ClientHeaderTimeout},
		{"http.idle_timeout", config.DefaultHTTPIdleTimeout, ClientIdleTimeout},
		{"http.body_timeout", config.DefaultBodyTimeout, ClientBodyTimeout},
		{"http.write_timeout", config.DefaultWriteTimeout, ClientWriteTimeout},
	} {
		require.Equal(t, tc.config, tc.relay, tc.key)
	}
	var l Limits
	l.defaults()
	require.Equal(t, Limits{HeaderTimeout: config.DefaultHeaderTimeout, IdleTimeout: config.DefaultHTTPIdleTimeout,
		BodyTimeout: config.DefaultBodyTimeout, WriteTimeout: config.DefaultWriteTimeout}, l)
}
