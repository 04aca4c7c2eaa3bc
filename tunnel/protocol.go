package tunnel

import (
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"unicode/utf8"
)

// ALPN is the TLS application protocol of the tunnel; with QUIC it selects
// native QUIC streams.
const ALPN = "mcptun/1"

// alpnQUICYamux selects yamux over one QUIC stream.
const alpnQUICYamux = "mcptun/1-yamux"

// ProtocolVersion is the handshake version this package speaks.
const ProtocolVersion = 1

// MaxFrameSize is the largest control frame body, in bytes.
const MaxFrameSize = 64 << 10

// Refusal codes sent by the relay in a "refused" answer.
const (
	CodeBadCredential      = "bad_credential"
	CodeUnknownAgent       = "unknown_agent"
	CodeUnsupportedVersion = "unsupported_version"
	CodeBadHello           = "bad_hello"
)

// goaway codes.
const (
	codeReplaced = "replaced"
	// codeDraining: the relay is shutting down. It opens no new streams
	// on the session and closes it once the exchanges in flight are done;
	// the agent connects again (to the relay's replacement) meanwhile.
	codeDraining = "draining"
)

// Limits on what an agent may offer, so one hello cannot bloat the relay.
const (
	maxTokenLen = 4096
	maxServers  = 1000
	// maxInstanceLen and maxConns bound the hello's instance and conn.
	maxInstanceLen = 64
	maxConns       = 1024
)

// Message types on the control stream.
const (
	typeHello   = "hello"
	typeWelcome = "welcome"
	typeRefused = "refused"
	typeGoAway  = "goaway"
	// typeDraining is sent once by an agent shutting down, so that the
	// relay routes it no new exchanges.
	typeDraining = "draining"
	// typePing is the agent's heartbeat, sent every second after the
	// welcome; relays ignore it (older relays ignore every agent frame).
	typePing = "ping"
	// typeOffers is sent by an agent whose servers changed (a config
	// reload): the full list it now offers, replacing its hello's. A relay
	// that predates it ignores it (relays skip unknown agent frames); one
	// that does not know its version ignores it and logs so (see
	// decodeOffers).
	typeOffers = "offers"
)

// OffersVersion is the version of the offers frame this package speaks;
// it changes only if the frame's meaning does (new fields are added
// without a new version, as in every frame).
const OffersVersion = 1

// Server kinds an agent may offer.
const (
	KindStdio = "stdio"
	KindHTTP  = "http"
)

// namePattern is what the config package accepts for agent and server names:
// safe in a URL path segment, a log field and a metric label.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether s is acceptable as an agent or server name.
func ValidName(s string) bool { return namePattern.MatchString(s) }

// OfferedServer is an MCP server an agent offers through the tunnel. The
// tunnel only carries the list; it does not interpret it.
type OfferedServer struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // KindStdio or KindHTTP
}

// RefusedError is the relay's refusal of an agent's hello.
type RefusedError struct {
	Code    string // CodeBadCredential, CodeUnknownAgent, CodeUnsupportedVersion, CodeBadHello, or a code from a newer relay
	Message string // for humans
}

func (e *RefusedError) Error() string {
	return "tunnel: relay refused: " + e.describe()
}

// describe is the code in words, then the relay's message.
func (e *RefusedError) describe() string {
	var what string
	switch e.Code {
	case CodeBadCredential:
		what = "bad credential"
	case CodeUnknownAgent:
		what = "unknown agent"
	case CodeUnsupportedVersion:
		what = "unsupported protocol version"
	case CodeBadHello:
		what = "bad hello"
	default:
		what = fmt.Sprintf("code %q", e.Code)
	}
	if e.Message == "" {
		return what
	}
	return what + ": " + e.Message
}

// ErrReplaced ends an agent's session when the relay accepted a newer
// session for the same agent name.
var ErrReplaced = errors.New("tunnel: relay replaced this session with a newer one for the same agent name")

// How an agent proves who it is, as its hello says (Auth).
const (
	// AuthToken: a bearer token, sent in the hello; the relay stores its
	// SHA-256. A hello without "auth" means this.
	AuthToken = "token"
	// AuthEd25519: an Ed25519 signature over the session binding (see
	// authTranscript); the relay stores the public key.
	AuthEd25519 = "ed25519"
	// AuthCertificate: the TLS client certificate of the session; the
	// relay stores its hash.
	AuthCertificate = "certificate"
)

// hello is the agent's first frame.
type hello struct {
	Type    string          `json:"type"`
	Version int             `json:"version"`
	Agent   string          `json:"agent"`
	Token   string          `json:"token,omitempty"`
	Servers []OfferedServer `json:"servers"`

	// Auth is the credential kind; "" means AuthToken (older agents).
	Auth string `json:"auth,omitempty"`
	// PublicKey and Signature, with AuthEd25519: the agent's key and its
	// signature of authTranscript for this TLS session (base64 in JSON).
	PublicKey []byte `json:"public_key,omitempty"`
	Signature []byte `json:"signature,omitempty"`
	// Software is the agent's build ("mcptun v1.4.0"), for status pages;
	// older agents send none.
	Software string `json:"software,omitempty"`
	// Instance is the agent process's random id and Conn the number of
	// this tunnel among that process's tunnels (absent from older
	// agents). The relay replaces a session only with one of the same
	// credential and the same instance and conn, or with one of another
	// instance (a restarted process): so an agent may hold several
	// tunnels to one relay (relay.connections behind a load balancer).
	Instance string `json:"instance,omitempty"`
	Conn     int    `json:"conn,omitempty"`
}

// authKind is h.Auth with the default filled in.
func (h *hello) authKind() string {
	if h.Auth == "" {
		return AuthToken
	}
	return h.Auth
}

// LogValue keeps the token out of logs whatever logs a hello.
func (h hello) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("version", h.Version),
		slog.String("agent", h.Agent),
		slog.Int("servers", len(h.Servers)),
		slog.String("auth", h.authKind()),
	)
}

// answer is every relay frame: welcome, refused, goaway.
type answer struct {
	Type    string `json:"type"`
	Version int    `json:"version,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`

	// Relay, in a welcome, is the relay process's random instance id: an
	// agent that reaches one relay at two addresses (a load balancer's)
	// sees it and keeps one tunnel, as two would replace each other.
	Relay string `json:"relay,omitempty"`
	// ClientURL, in a welcome, is the base URL MCP clients reach the
	// relay at (http.public_url, or its http.listen); an empty or
	// unspecified host means the host the agent dialed. Quick expose
	// prints the client URL from it.
	ClientURL string `json:"client_url,omitempty"`
	// Fleet, in a welcome, says the relay is one of a fleet that forwards
	// to each other (relay.yaml cluster:): an agent with one address for
	// it (a load balancer's) then opens relay.connections tunnels.
	Fleet bool `json:"fleet,omitempty"`
}

// errBadFrame marks a frame whose length prefix is invalid, as opposed to a
// stream that failed.
var errBadFrame = errors.New("bad frame")

// writeFrame sends v as one frame in one Write, so a frame usually travels
// in one packet.
func writeFrame(w io.Writer, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("tunnel: encode frame: %w", err)
	}
	if len(body) > MaxFrameSize {
		return fmt.Errorf("tunnel: frame of %d bytes exceeds the %d byte limit", len(body), MaxFrameSize)
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("tunnel: write frame: %w", err)
	}
	return nil
}

// readFrame reads one frame body. It never allocates more than
// MaxFrameSize, whatever the length prefix claims.
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF // a clean end between frames
		}
		return nil, fmt.Errorf("tunnel: read frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return nil, fmt.Errorf("tunnel: read frame: %w: empty frame", errBadFrame)
	}
	if n > MaxFrameSize {
		return nil, fmt.Errorf("tunnel: read frame: %w: length %d exceeds the %d byte limit", errBadFrame, n, MaxFrameSize)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("tunnel: read frame body (%d bytes): %w", n, err)
	}
	return body, nil
}

// decodeHello parses and validates a hello frame body. Its errors are
// *RefusedError, ready to send back: the version is checked before anything
// else so that a newer agent learns it must speak an older version rather
// than that its hello is malformed.
func decodeHello(b []byte) (hello, error) {
	var head struct {
		Type    string `json:"type"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return hello{}, &RefusedError{Code: CodeBadHello, Message: "hello is not a JSON object with an integer version: " + jsonErrorText(err)}
	}
	if head.Type != typeHello {
		return hello{}, &RefusedError{Code: CodeBadHello, Message: fmt.Sprintf("first frame has type %q, want %q", truncate(head.Type, 32), typeHello)}
	}
	if head.Version != ProtocolVersion {
		return hello{}, &RefusedError{Code: CodeUnsupportedVersion, Message: fmt.Sprintf("relay speaks protocol version %d, agent sent %d", ProtocolVersion, head.Version)}
	}
	var h hello
	if err := json.Unmarshal(b, &h); err != nil {
		return hello{}, &RefusedError{Code: CodeBadHello, Message: "malformed hello: " + jsonErrorText(err)}
	}
	if err := h.validate(); err != nil {
		return hello{}, &RefusedError{Code: CodeBadHello, Message: err.Error()}
	}
	return h, nil
}

// validate checks what the relay relies on. The same check runs in
// NewClient, so a misconfigured agent fails before it dials.
func (h *hello) validate() error {
	if !ValidName(h.Agent) {
		return fmt.Errorf("invalid agent name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", truncate(h.Agent, 64))
	}
	if err := h.validateCredential(); err != nil {
		return err
	}
	if !validSoftware(h.Software) {
		return fmt.Errorf("software %q: at most %d printable ASCII characters", truncate(h.Software, 64), maxSoftwareLen)
	}
	if len(h.Instance) > maxInstanceLen {
		return fmt.Errorf("instance id longer than %d bytes", maxInstanceLen)
	}
	if h.Conn < 0 || h.Conn > maxConns {
		return fmt.Errorf("conn %d out of range 0-%d", h.Conn, maxConns)
	}
	return validateServers(h.Servers)
}

// validateServers checks an offer list (a hello's, an offers frame's).
func validateServers(servers []OfferedServer) error {
	if len(servers) > maxServers {
		return fmt.Errorf("%d servers offered, at most %d allowed", len(servers), maxServers)
	}
	seen := make(map[string]bool, len(servers))
	for i, s := range servers {
		if !ValidName(s.Name) {
			return fmt.Errorf("servers[%d]: invalid server name %q", i, truncate(s.Name, 64))
		}
		if s.Kind != KindStdio && s.Kind != KindHTTP {
			return fmt.Errorf("servers[%d] (%s): kind %q, want %q or %q", i, s.Name, truncate(s.Kind, 32), KindStdio, KindHTTP)
		}
		if seen[s.Name] {
			return fmt.Errorf("servers[%d]: server %q offered twice", i, s.Name)
		}
		seen[s.Name] = true
	}
	return nil
}

// validateCredential checks that the hello carries exactly the fields of
// its credential kind.
func (h *hello) validateCredential() error {
	kind := h.authKind()
	if kind != AuthEd25519 && (h.PublicKey != nil || h.Signature != nil) {
		return fmt.Errorf("public_key and signature belong to auth %q, not %q", AuthEd25519, kind)
	}
	if kind != AuthToken && h.Token != "" {
		return fmt.Errorf("token sent with auth %q: send one credential", kind)
	}
	switch kind {
	case AuthToken:
		if h.Token == "" {
			return errors.New("empty token")
		}
		if len(h.Token) > maxTokenLen {
			return fmt.Errorf("token longer than %d bytes", maxTokenLen)
		}
	case AuthEd25519:
		if len(h.PublicKey) != ed25519.PublicKeySize {
			return fmt.Errorf("public_key of %d bytes, want %d", len(h.PublicKey), ed25519.PublicKeySize)
		}
		if len(h.Signature) != ed25519.SignatureSize {
			return fmt.Errorf("signature of %d bytes, want %d", len(h.Signature), ed25519.SignatureSize)
		}
	case AuthCertificate:
		// The credential is the TLS session's client certificate.
	default:
		return fmt.Errorf("auth %q: want %q, %q or %q", truncate(kind, 32), AuthToken, AuthEd25519, AuthCertificate)
	}
	return nil
}

// offers is the agent's offers frame.
type offers struct {
	Type    string          `json:"type"`
	Version int             `json:"version"`
	Servers []OfferedServer `json:"servers"`
}

// ErrOffersVersion marks an offers frame of a version this relay does not
// speak: it is ignored (the agent's earlier offers stay), not a reason to
// end the session.
var ErrOffersVersion = errors.New("unsupported offers version")

// decodeOffers parses and validates an offers frame body. The error says
// what was wrong, quoting at most a little of the input.
func decodeOffers(b []byte) ([]OfferedServer, error) {
	var head struct {
		Type    string `json:"type"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("tunnel: offers frame is not a JSON object with an integer version: %s", jsonErrorText(err))
	}
	if head.Type != typeOffers {
		return nil, fmt.Errorf("tunnel: frame has type %q, want %q", truncate(head.Type, 32), typeOffers)
	}
	if head.Version != OffersVersion {
		return nil, fmt.Errorf("tunnel: offers frame: %w %d (this relay speaks %d)", ErrOffersVersion, head.Version, OffersVersion)
	}
	var o offers
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("tunnel: malformed offers frame: %s", jsonErrorText(err))
	}
	if o.Servers == nil {
		return nil, errors.New("tunnel: offers frame has no servers list")
	}
	if err := validateServers(o.Servers); err != nil {
		return nil, fmt.Errorf("tunnel: offers frame: %w", err)
	}
	return o.Servers, nil
}

// decodeAnswer parses a relay frame. Types it does not know are returned as
// they are, for the caller to skip.
func decodeAnswer(b []byte) (answer, error) {
	var a answer
	if err := json.Unmarshal(b, &a); err != nil {
		return answer{}, fmt.Errorf("tunnel: malformed relay frame: %s", jsonErrorText(err))
	}
	if a.Type == "" {
		return answer{}, errors.New("tunnel: relay frame has no type")
	}
	return a, nil
}

// jsonErrorText keeps JSON errors short: they may quote attacker-chosen
// input.
func jsonErrorText(err error) string { return truncate(err.Error(), 200) }

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
