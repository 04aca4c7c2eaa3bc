// Package tunnel carries byte streams between an mcptun agent and an mcptun
// relay. The agent runs inside a private network and dials out; the relay
// then opens streams toward the agent, one per exchange, and the agent serves
// them from a net.Listener. The package knows nothing about MCP or HTTP:
// whatever runs on a stream is the caller's business.
//
// # Transports
//
// The relay listens on one host:port for both UDP and TCP:
//
//   - QUIC (UDP), ALPN "mcptun/1": every tunnel stream is a native QUIC
//     bidirectional stream, so a slow or lossy stream never delays another.
//   - QUIC, ALPN "mcptun/1-yamux": one QUIC stream carries a yamux session and
//     the tunnel streams are yamux streams. For comparisons, and networks that
//     want a single ordered pipe.
//   - TLS 1.3 over TCP, ALPN "mcptun/1": a yamux session over the TLS
//     connection; the fallback where UDP is blocked.
//
// The agent is always the yamux client and the relay the yamux server. With
// transport "auto" the agent tries QUIC first and falls back to TCP when QUIC
// has not completed its handshake within ClientConfig.QUICTimeout.
//
// # Liveness
//
// A dead or frozen peer is noticed within 4.5 s on every transport: QUIC
// sends a keep-alive PING after 1 s without a packet and ends the
// connection after a 3.5 s idle timeout (which restarts at that PING, hence
// 1 + 3.5 s at worst); over yamux a watchdog counts any byte from the peer
// as a sign of life, pings after 1 s of silence and ends the session after
// 3.5 s (yamux's own keep-alive is off: its ping answer can queue behind
// data on a busy link). An idle session costs a small packet and its
// acknowledgement per second. A killed peer on TCP is noticed at once from
// the kernel's reset.
//
// Both ends send QUIC stateless resets (RFC 9000 §10.3) for connections they
// do not know, so a peer that lost its state is told at the next packet
// instead of waiting for the idle timeout. The relay derives its reset key
// from its TLS private key and the agent from its credential's secret (its
// token, key seed or certificate key), each with
// HKDF-SHA256 and a label of its own: the key is the same after a restart,
// and neither secret is exposed. A restarted relay thus resets the agent's
// connection at the agent's next heartbeat (below) and the agent reconnects
// at once. (The agent keeps one UDP socket per address family for all its
// QUIC sessions, so it can also reset a relay still sending to a connection
// the agent dropped; a restarted agent process gets a new port and the
// relay's packets reach nobody, so there the idle timeout is what tells.)
//
// # Handshake
//
// The first stream the agent opens is the control stream. Each message on it
// is a frame: a 4-byte big-endian length (1 to 65536) followed by that many
// bytes of JSON. The agent sends
//
//	{"type":"hello","version":1,"agent":"lab","token":"…","servers":[{"name":"git","kind":"stdio"}]}
//
// and the relay answers with one of
//
//	{"type":"welcome","version":1,"relay":"5f0c…"}
//	{"type":"refused","code":"bad_credential","message":"…"}
//
// The welcome's "relay" is the relay process's random instance id (absent
// from older relays): an agent that reaches one relay at two addresses
// keeps one tunnel (see Multi). A relay of a fleet (relays that forward
// to each other) adds "fleet":true.
//
// The hello may carry "instance", the agent process's random id, and
// "conn", the tunnel's number within that process (Multi sets both).
// They make replacement precise: a session replaces those of its
// credential that have another instance (a restarted process, or a
// second process sharing the token) or the same instance and conn (the
// same tunnel reconnecting), and serves beside those of the same
// instance with another conn: one process's tunnels through a load
// balancer that land on one relay are a pool there, streams going to
// each in turn. A hello without them replaces every session of its
// credential, as before.
//
// Instead of a token, an agent may carry an Ed25519 key or a TLS client
// certificate (ClientConfig.Key, ClientConfig.Certificate), and its hello
// then says so:
//
//	{"type":"hello","version":1,"agent":"lab","auth":"ed25519","public_key":"<base64>","signature":"<base64>","servers":[…]}
//	{"type":"hello","version":1,"agent":"lab","auth":"certificate","servers":[…]}
//
// The signature is over a transcript of the context string "mcptun agent
// auth v1", 32 bytes exported from the TLS session (label "EXPORTER-mcptun
// agent auth v1"), the agent's name, the SHA-256 of the relay certificate's
// SubjectPublicKeyInfo and the public key (see authTranscript), so it is
// good for that session only: a hello recorded by a relay, or on the way,
// and sent on another connection is refused. A certificate is proved by
// the TLS handshake (the relay requests one from every agent and requires
// none) and matched against the relay's list by hash. The relay's agent
// list may mix the kinds; each credential is one replica's. A relay older
// than these fields reads such a hello as a token's without one, and
// answers bad_hello.
//
// Refusal codes are bad_credential, unknown_agent, unsupported_version and
// bad_hello. The relay stores only the SHA-256 of each agent's token and
// compares hashes in constant time, also for names it does not know, and it
// answers bad_credential for both an unknown name and a wrong token so that a
// caller cannot probe for agent names; its own log says which it was. A
// refused agent waits at least ClientConfig.MaxBackoff before trying again.
// The whole handshake (TLS, mux setup, hello, answer) must finish within the
// relay's handshake timeout (10 s by default), so a silent peer cannot hold a
// slot.
//
// After the welcome the control stream stays open for the life of the
// session: when either side sees it end, the session is over. The agent
// sends
//
//	{"type":"ping"}
//
// every second. The relay does not answer: the point is a packet each
// second big enough to draw a stateless reset from a restarted relay (QUIC's
// own keep-alive PINGs are too small to be answered with one), and a sign
// of life for the relay's yamux watchdog. The relay may send goaway frames
// before closing the stream:
//
//	{"type":"goaway","code":"replaced","message":"…"}
//
// when another session authenticated with the same agent name and the same
// credential (the newest session wins). New exchanges go to the newer
// session at once; the relay sends the goaway once the replaced session's
// last stream has closed, or after 30 s, so exchanges in flight finish. An
// agent told it was replaced waits MaxBackoff before reconnecting, so two
// agents misconfigured with one token do not evict each other in a tight
// loop, unless it replaced itself (see Reconnecting). A session with
// another credential listed for the name is another replica: it serves
// beside the others (Server.Route picks among them, ReplicaTag names
// them), and replaces none. Unknown frame types and unknown JSON fields are
// ignored, leaving room for later protocol revisions.
//
// # Draining
//
// A relay that is shutting down (Server.Drain) stops accepting agent
// connections and sends, without closing anything,
//
//	{"type":"goaway","code":"draining","message":"…"}
//
// It opens no new streams on the session and closes it once the exchanges
// in flight are done (or its grace period ends). The agent keeps that
// session serving its streams and at once connects again (to another
// relay, or to the relay's replacement once it is up), retrying at the
// shortest backoff while the old session lasts: "draining" is not
// "replaced", and costs no MaxBackoff wait.
//
// An agent that is shutting down (Client.Drain) sends, beside its pings,
// once:
//
//	{"type":"draining"}
//
// The relay then routes it no new exchanges (Server.AgentDraining) while
// the streams in flight finish; the agent makes no new session after it.
// A relay that does not know the frame ignores it.
//
// # Streams
//
// Every later stream is opened by the relay (Server.Dial) and accepted by the
// agent (Client.Listener). With native QUIC streams the agent sees a stream
// only once the relay has written to it. A Stream is a net.Conn with
// CloseWrite for half-close; Close ends both directions (on QUIC it also
// tells the peer to stop sending). Streams the agent opens toward the relay
// are refused: the relay accepts nothing but the control stream.
//
// # Reconnecting
//
// Client.Run reconnects until its context ends, waiting between attempts a
// random delay in [MinBackoff, min(MaxBackoff, MinBackoff·2^(n+1))) after the
// n-th consecutive failure ("full jitter" above a floor, 0.5 s and 30 s by
// default). The count resets once a session has lived at least 10 s.
//
// In auto mode, once QUIC has failed and TCP worked, reconnects try TCP
// first (where UDP is blocked every reconnect would otherwise wait
// QUICTimeout for nothing), and while a session runs over TCP the agent
// tries QUIC in the background after random waits drawn the same way
// between QUICProbeMin and QUICProbeMax (5 s to 10 s at first, then at
// least every 10 minutes). When a QUIC session completes its handshake the
// relay routes new exchanges to it; the TCP session ends when its last
// exchange does (at most 30 s later) and the agent thinks nothing of the
// goaway it gets there. Reconnects then try QUIC first again.
// n-th consecutive failure ("full jitter" above a floor). The count resets
// once a session has lived at least 10 s.
//
// # Several relays
//
// Multi runs one Client per relay — each entry of a list, and each address
// a relay's host name resolves to, looked up again periodically; when all
// that comes to one address and the relay there says it is one of a
// fleet, MultiConfig.Connections Clients through it — with one
// Listener for the streams of all of them: sessions live at the agent, so
// any relay with a tunnel serves any of them. Each Client reconnects on its
// own; each is verified by its entry's host name, never by the address
// dialed (ClientConfig.DialAddress).
package tunnel
