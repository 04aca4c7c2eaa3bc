// Package cluster joins mcptun relays into a fleet behind one load
// balancer: a registry in NATS says which relay holds a tunnel to which
// agent (and which of its replicas), and an authenticated relay-to-relay
// link carries the exchanges a relay forwards to the relay that holds the
// agent.
//
// # The link
//
// A relay listens for its peers on cluster.listen: TLS 1.3 over TCP with
// a certificate made at start (nobody verifies it: authenticity comes
// from the shared secret, below). The dialing relay sends one frame, a
// 2-byte big-endian length (1 to MaxFrameSize) and that much JSON:
//
//	{"type":"peer_hello","version":1,"relay":"5f0c…","mac":"…"}
//
// and the listening relay answers
//
//	{"type":"peer_welcome","version":1,"relay":"a1b2…","mac":"…"}
//	{"type":"peer_refused","code":"bad_secret","message":"…"}
//
// Each mac is HMAC-SHA256 keyed with the secret over a label of the
// sender's role, the sender's relay id and 32 bytes exported from the TLS
// session (RFC 8446 §7.5): a mac proves the secret and is worth nothing on
// any other connection, so a machine in the middle (which has two TLS
// sessions, with two exporters) can neither pass one on nor replay it.
// Both sides check the other's in constant time; only then does the link
// carry HTTP/1.1 exchanges, the dialing relay as the client.
package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mcptun/mcptun/internal/devcert"
	"github.com/mcptun/mcptun/internal/logging"
)

// ProtocolVersion is the link handshake's version.
const ProtocolVersion = 1

// MaxFrameSize bounds a handshake frame.
const MaxFrameSize = 4096

// MinSecretLen is the shortest secret accepted, in bytes.
const MinSecretLen = 32

// HandshakeTimeout bounds TLS and the frames of a link handshake.
const HandshakeTimeout = 5 * time.Second

// CodeBadSecret refuses a peer whose mac does not verify.
const CodeBadSecret = "bad_secret"

const (
	typeHello   = "peer_hello"
	typeWelcome = "peer_welcome"
	typeRefused = "peer_refused"

	alpn          = "mcptun-peer/1"
	exporterLabel = "EXPORTER-mcptun-peer"
	labelDialer   = "mcptun peer dialer v1"
	labelListener = "mcptun peer listener v1"
)

// ErrBadSecret is returned, wrapped, when a peer's mac does not verify or
// the peer refused ours.
var ErrBadSecret = errors.New("cluster: relay-to-relay authentication failed (cluster.secret_file differs between the relays?)")

// frame is every handshake message.
type frame struct {
	Type    string `json:"type"`
	Version int    `json:"version,omitempty"`
	Relay   string `json:"relay,omitempty"`
	MAC     string `json:"mac,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

func writeFrame(w io.Writer, f frame) error {
	body, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("cluster: encode frame: %w", err)
	}
	if len(body) > MaxFrameSize {
		return fmt.Errorf("cluster: frame of %d bytes over the %d byte limit", len(body), MaxFrameSize)
	}
	buf := make([]byte, 2+len(body))
	binary.BigEndian.PutUint16(buf, uint16(len(body)))
	copy(buf[2:], body)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("cluster: write frame: %w", err)
	}
	return nil
}

// readFrame reads and decodes one frame; it never allocates more than
// MaxFrameSize.
func readFrame(r io.Reader) (frame, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return frame{}, fmt.Errorf("cluster: read frame header: %w", err)
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n == 0 || n > MaxFrameSize {
		return frame{}, fmt.Errorf("cluster: read frame: length %d, want 1 to %d", n, MaxFrameSize)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return frame{}, fmt.Errorf("cluster: read frame body (%d bytes): %w", n, err)
	}
	return decodeFrame(body)
}

// decodeFrame parses a frame body and checks what every frame needs.
func decodeFrame(b []byte) (frame, error) {
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		return frame{}, fmt.Errorf("cluster: malformed frame: %.200s", err.Error())
	}
	switch f.Type {
	case typeHello, typeWelcome:
		if f.Version != ProtocolVersion {
			return frame{}, fmt.Errorf("cluster: %s of version %d, want %d", f.Type, f.Version, ProtocolVersion)
		}
		if f.Relay == "" || len(f.Relay) > 64 {
			return frame{}, fmt.Errorf("cluster: %s: relay id of %d bytes, want 1 to 64", f.Type, len(f.Relay))
		}
		if len(f.MAC) != 2*sha256.Size {
			return frame{}, fmt.Errorf("cluster: %s: mac of %d characters, want %d", f.Type, len(f.MAC), 2*sha256.Size)
		}
		if _, err := hex.DecodeString(f.MAC); err != nil {
			return frame{}, fmt.Errorf("cluster: %s: mac is not hex", f.Type)
		}
	case typeRefused:
	default:
		return frame{}, fmt.Errorf("cluster: frame of type %.32q, want a handshake frame", f.Type)
	}
	return f, nil
}

// mac binds the secret to one TLS session, one role and one relay id.
func mac(secret []byte, label, relay string, ekm []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write([]byte(relay))
	m.Write([]byte{0})
	m.Write(ekm)
	return hex.EncodeToString(m.Sum(nil))
}

// macOK compares in constant time.
func macOK(secret []byte, label, relay string, ekm []byte, got string) bool {
	want := mac(secret, label, relay, ekm)
	return hmac.Equal([]byte(want), []byte(got))
}

func exporter(tc *tls.Conn) ([]byte, error) {
	cs := tc.ConnectionState()
	ekm, err := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("cluster: tls exporter: %w", err)
	}
	return ekm, nil
}

// LinkConfig configures both ends of relay-to-relay links.
type LinkConfig struct {
	// Relay is this relay's id (sent in the handshake, for logs).
	Relay string
	// Secret is shared by every relay of the fleet (MinSecretLen bytes
	// at least).
	Secret []byte
	Logger *slog.Logger
}

func (c *LinkConfig) check() error {
	if len(c.Secret) < MinSecretLen {
		return fmt.Errorf("cluster: secret of %d bytes, want at least %d", len(c.Secret), MinSecretLen)
	}
	if c.Relay == "" {
		return errors.New("cluster: no relay id")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Dialer opens authenticated links to peer relays.
type Dialer struct {
	cfg LinkConfig
	tls *tls.Config
}

// NewDialer checks cfg.
func NewDialer(cfg LinkConfig) (*Dialer, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return &Dialer{cfg: cfg, tls: &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpn},
		// The peer's certificate is made at its start and proves
		// nothing; its mac over this session's exporter does.
		InsecureSkipVerify: true, //nolint:gosec // authenticated by the HMAC handshake
	}}, nil
}

// Dial opens a link to the relay listening at addr and authenticates
// both ends. The error wraps ErrBadSecret when the secrets differ.
func (d *Dialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	hctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
	defer cancel()
	var nd net.Dialer
	raw, err := nd.DialContext(hctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: dial relay %s: %w", addr, err)
	}
	tc := tls.Client(raw, d.tls)
	if err := d.handshake(hctx, tc); err != nil {
		raw.Close()
		return nil, fmt.Errorf("cluster: relay %s: %w", addr, err)
	}
	return tc, nil
}

func (d *Dialer) handshake(ctx context.Context, tc *tls.Conn) error {
	if dl, ok := ctx.Deadline(); ok {
		tc.SetDeadline(dl)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls handshake: %w", err)
	}
	ekm, err := exporter(tc)
	if err != nil {
		return err
	}
	if err := writeFrame(tc, frame{Type: typeHello, Version: ProtocolVersion, Relay: d.cfg.Relay,
		MAC: mac(d.cfg.Secret, labelDialer, d.cfg.Relay, ekm)}); err != nil {
		return err
	}
	f, err := readFrame(tc)
	if err != nil {
		return err
	}
	switch {
	case f.Type == typeRefused && f.Code == CodeBadSecret:
		return fmt.Errorf("%w: refused: %.200s", ErrBadSecret, f.Message)
	case f.Type == typeRefused:
		return fmt.Errorf("refused: %.32s: %.200s", f.Code, f.Message)
	case f.Type != typeWelcome:
		return fmt.Errorf("answered %.32q, want %s", f.Type, typeWelcome)
	case !macOK(d.cfg.Secret, labelListener, f.Relay, ekm, f.MAC):
		return fmt.Errorf("%w: the listening relay's mac does not verify", ErrBadSecret)
	}
	tc.SetDeadline(time.Time{})
	return nil
}

// link is an authenticated connection as Accept returns it: not a
// *tls.Conn to net/http's server, which would otherwise close it for its
// ALPN protocol ("mcptun-peer/1" is not one of its own).
type link struct{ net.Conn }

// Listener accepts links from peer relays; Accept returns only
// authenticated ones.
type Listener struct {
	cfg  LinkConfig
	ln   net.Listener
	tls  *tls.Config
	out  chan net.Conn
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	fail *logging.Limit

	// slots bounds the links in handshake: the port is reachable by
	// whatever reaches the relays, and a connection that never speaks
	// must not cost a goroutine and a TLS state each without limit.
	slots chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]struct{} // in handshake
}

// MaxPendingHandshakes bounds the relay-to-relay links a Listener
// authenticates at once; a connection beyond it is closed at once (peers
// dial again, with a fresh link, on their next exchange).
const MaxPendingHandshakes = 64

// Listen binds addr and authenticates peers in goroutines owned by the
// Listener until Close.
func Listen(cfg LinkConfig, addr string) (*Listener, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen %q: %w", addr, err)
	}
	if host == "" {
		host = "localhost"
	}
	cert, _, err := devcert.Certificate(host)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen: certificate: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen %s: %w", addr, err)
	}
	l := &Listener{
		cfg: cfg, ln: ln,
		tls:   &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}, Certificates: []tls.Certificate{cert}},
		out:   make(chan net.Conn),
		done:  make(chan struct{}),
		fail:  logging.NewLimit(logging.LimitRate, logging.LimitBurst),
		conns: map[net.Conn]struct{}{},
		slots: make(chan struct{}, MaxPendingHandshakes),
	}
	l.wg.Go(l.acceptLoop)
	return l, nil
}

// Addr is the address listened on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Accept returns the next authenticated link.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.out:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting, ends the handshakes in progress and waits for
// the Listener's goroutines. Links already returned by Accept are the
// caller's.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.ln.Close()
		l.mu.Lock()
		for c := range l.conns {
			c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return err
}

func (l *Listener) acceptLoop() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.cfg.Logger.Warn("cluster: accept", "err", err)
			select {
			case <-l.done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case l.slots <- struct{}{}:
		default:
			l.fail.Log(l.cfg.Logger, slog.LevelWarn, "cluster: too many relay-to-relay links in handshake; closing one",
				"remote", c.RemoteAddr(), "max", MaxPendingHandshakes)
			c.Close()
			continue
		}
		l.mu.Lock()
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		l.wg.Go(func() { l.serve(c) })
	}
}

// pending is how many links are in handshake.
func (l *Listener) pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *Listener) serve(c net.Conn) {
	ok := false
	defer func() {
		l.mu.Lock()
		delete(l.conns, c)
		l.mu.Unlock()
		if !ok {
			c.Close()
		}
	}()
	tc := tls.Server(c, l.tls)
	peer, err := l.handshake(tc)
	<-l.slots
	if err != nil {
		l.fail.Log(l.cfg.Logger, slog.LevelWarn, "cluster: refused a relay-to-relay link", "remote", c.RemoteAddr(), "err", err)
		return
	}
	l.cfg.Logger.Debug("cluster: relay-to-relay link up", "peer", peer, "remote", c.RemoteAddr())
	select {
	case l.out <- link{tc}:
		ok = true
	case <-l.done:
	}
}

func (l *Listener) handshake(tc *tls.Conn) (peer string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
	defer cancel()
	dl, _ := ctx.Deadline()
	tc.SetDeadline(dl)
	if err := tc.HandshakeContext(ctx); err != nil {
		return "", fmt.Errorf("tls handshake: %w", err)
	}
	ekm, err := exporter(tc)
	if err != nil {
		return "", err
	}
	f, err := readFrame(tc)
	if err != nil {
		return "", err
	}
	if f.Type != typeHello {
		return "", fmt.Errorf("first frame %.32q, want %s", f.Type, typeHello)
	}
	if !macOK(l.cfg.Secret, labelDialer, f.Relay, ekm, f.MAC) {
		_ = writeFrame(tc, frame{Type: typeRefused, Code: CodeBadSecret, Message: "relay-to-relay authentication failed"})
		return "", fmt.Errorf("%w: mac of relay %.64q does not verify", ErrBadSecret, f.Relay)
	}
	if err := writeFrame(tc, frame{Type: typeWelcome, Version: ProtocolVersion, Relay: l.cfg.Relay,
		MAC: mac(l.cfg.Secret, labelListener, l.cfg.Relay, ekm)}); err != nil {
		return "", err
	}
	tc.SetDeadline(time.Time{})
	return f.Relay, nil
}
