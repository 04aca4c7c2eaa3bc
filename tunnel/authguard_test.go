package tunnel

import (
	"errors"
	"strings"
	"testing"

	"github.com/mcptun/mcptun/internal/authguard"
)

// TestRefusedHandshakesThrottled: a source whose handshakes keep being
// refused is, past its allowance, dropped before the handshake (a correct
// token from it too, until the allowance refills), over TCP and QUIC; the
// relay logs the failures once per source and interval, never the token.
func TestRefusedHandshakesThrottled(t *testing.T) {
	const burst, attempts = 3, 20
	for _, transport := range []string{TransportTCP, TransportQUIC} {
		t.Run(transport, func(t *testing.T) {
			ctx := testCtx(t)
			logger, lb := newLog(t, "guard")
			guard := authguard.New(authguard.Config{Rate: 0.01, Burst: burst, What: "agent handshake", Logger: logger})
			r := startRelay(t, ServerConfig{AuthGuard: guard})
			cfg := agentConfig(t, r.Addr())
			cfg.Transport = transport
			cfg.Token = "wrong-token-0123456789"
			refused, dropped := 0, 0
			for range attempts {
				_, err := Connect(ctx, cfg)
				var ref *RefusedError
				switch {
				case errors.As(err, &ref) && ref.Code == CodeBadCredential:
					refused++
				case err != nil:
					dropped++
				default:
					t.Fatal("a wrong token connected")
				}
			}
			t.Logf("%s: %d of %d wrong tokens checked, %d dropped unchecked", transport, refused, attempts, dropped)
			if refused != burst {
				t.Errorf("%d wrong tokens were checked, want the burst of %d", refused, burst)
			}
			// Over QUIC a throttled source is refused at its first packet,
			// uncounted (see Listen).
			if got := guard.Stats().Throttled.Load(); transport == TransportTCP && got != uint64(attempts-burst) {
				t.Errorf("throttled count %d, want %d", got, attempts-burst)
			}

			cfg.Token = testToken
			if _, err := Connect(ctx, cfg); err == nil {
				t.Error("a throttled source connected (the right token must wait too)")
			}

			lines := lb.count(`msg="authentication failed" what="agent handshake" source=127.0.0.1/32 failures=1`)
			if lines != 1 {
				t.Errorf("%d guard log lines, want 1 (one per source per interval):\n%s", lines, lb)
			}
			if strings.Contains(lb.String(), "wrong-token") || strings.Contains(r.log.String(), "wrong-token") {
				t.Error("a log contains the token")
			}
		})
	}
}
