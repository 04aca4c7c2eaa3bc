package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"time"
)

// PinMismatchError: the relay's certificate key is not the pinned one.
type PinMismatchError struct{ Got, Want [32]byte }

func (e *PinMismatchError) Error() string {
	return fmt.Sprintf("tunnel: relay certificate key has pin %x, want pinned %x", e.Got, e.Want)
}

// NotTunnelPortError: the address answered TLS but not the tunnel's
// protocol (ALPN): most likely the relay's HTTPS port, or another server.
type NotTunnelPortError struct{ Negotiated string }

func (e *NotTunnelPortError) Error() string {
	return fmt.Sprintf("tunnel: the server did not agree to the tunnel protocol %s (ALPN %q)", ALPN, e.Negotiated)
}

// Hint names the likely cause of an error dialing a relay, for an operator
// reading the agent's log or `mcptun check --probe`, or "" when there is
// nothing more to say than the error. The certificate comes first: in auto
// mode a certificate failure over QUIC is followed by the same failure over
// TCP, and it must not read like a UDP problem.
func Hint(err error) string {
	if err == nil {
		return ""
	}
	var (
		unknownCA *x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		pin       *PinMismatchError
		verify    *tls.CertificateVerificationError
		record    tls.RecordHeaderError
		alpn      *NotTunnelPortError
		refused   *RefusedError
	)
	switch {
	case errors.As(err, &refused):
		return ""
	case errors.As(err, &pin):
		return "the relay's certificate is not the pinned one: set relay.pin_sha256 to the pin `mcptun cert` printed for the relay's tunnel.cert_file (or use relay.ca_file)"
	case errors.As(err, &hostname):
		return fmt.Sprintf("the relay's certificate is not valid for %q: add that name to it (mcptun cert --name), dial a name it has, or set relay.server_name", hostname.Host)
	case errors.As(err, &unknownCA):
		return "the relay's certificate is not signed by a CA the agent trusts: set relay.ca_file to the CA that signed it (ca.crt from mcptun cert) or relay.pin_sha256 to its pin"
	case errors.As(err, &invalid):
		if invalid.Reason == x509.Expired {
			return "the relay's certificate has expired or is not yet valid (check both clocks): renew it with mcptun cert --force"
		}
		return "the relay's certificate was refused: set relay.ca_file to the CA that signed it or relay.pin_sha256 to its pin"
	case errors.As(err, &verify):
		return "the relay's certificate was refused: set relay.ca_file to the CA that signed it or relay.pin_sha256 to its pin"
	case errors.As(err, &record), errors.As(err, &alpn):
		return wrongAddressHint
	case errors.Is(err, syscall.ECONNREFUSED):
		return "nothing listens there on TCP: is the relay running, and is this its tunnel.listen address?"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "x509:") || strings.Contains(msg, "certificate"):
		return "the relay's certificate was refused: set relay.ca_file to the CA that signed it or relay.pin_sha256 to its pin"
	case strings.Contains(msg, "no application protocol"):
		return wrongAddressHint
	case strings.Contains(msg, "dial quic") && !strings.Contains(msg, "dial tcp"):
		if errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "timeout") {
			return "no answer over UDP (QUIC): a firewall may drop UDP to this port, or nothing listens there; transport: auto falls back to TLS over TCP"
		}
	}
	return ""
}

const wrongAddressHint = "this address answers, but not as a relay tunnel: it looks like the relay's HTTP port (http.listen) or another server; agents dial the relay's tunnel.listen port (7443 in the examples)"

// ProbeResult is what Probe found for each transport.
type ProbeResult struct {
	QUIC, TCP         error
	QUICTime, TCPTime time.Duration // until the TLS handshake completed
}

// Use is the transport an agent in mode (auto, quic, tcp) would use, or ""
// when none would connect.
func (r ProbeResult) Use(mode string) string {
	switch {
	case mode != TransportTCP && r.QUIC == nil:
		return TransportQUIC
	case mode != TransportQUIC && r.TCP == nil:
		return TransportTCP
	}
	return ""
}

// Probe dials the relay at address over QUIC and over TLS/TCP at once,
// with tlsConf (see ClientTLS), and completes the TLS handshake only: it
// sends no hello, so a running agent with the same credential is not
// replaced. It tells whether each transport reaches a relay that the
// configuration trusts. TCP gets timeout; QUIC at most what an agent in
// auto mode waits before it falls back to TCP (DefaultQUICTimeout), as
// UDP sent where nothing listens is never answered.
func Probe(ctx context.Context, address string, tlsConf *tls.Config, timeout time.Duration) (ProbeResult, error) {
	cfg, err := ClientConfig{Name: "probe", Token: "probe", Address: address, TLSConfig: tlsConf}.normalize()
	if err != nil {
		return ProbeResult{}, err
	}
	log := slog.New(slog.DiscardHandler)
	var r ProbeResult
	quicDone := make(chan struct{})
	go func() {
		defer close(quicDone)
		start := time.Now()
		qctx, cancel := context.WithTimeout(ctx, min(timeout, cfg.QUICTimeout))
		defer cancel()
		s, err := dialQUIC(qctx, &cfg, log, nil)
		r.QUICTime, r.QUIC = time.Since(start), err
		if err == nil {
			s.Close()
		}
	}()
	start := time.Now()
	tctx, cancel := context.WithTimeout(ctx, timeout)
	s, err := dialTCP(tctx, &cfg, log)
	cancel()
	r.TCPTime, r.TCP = time.Since(start), err
	if err == nil {
		s.Close()
	}
	<-quicDone
	return r, nil
}
