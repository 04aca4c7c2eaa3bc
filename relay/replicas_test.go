package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// replicaSet is agent dc1 served by two replicas over loopback TCP, each
// an HTTP server that names itself and echoes the session id it got.
type replicaSet struct {
	mu   sync.Mutex
	addr map[string]string // tag → address
	gone map[string]bool
	next int
}

var replicaTags = []string{"aaaaaaaa", "bbbbbbbb"}

func (s *replicaSet) Offers(agent, server string) (bool, bool) { return agent == "dc1", true }

func (s *replicaSet) Dial(ctx context.Context, agent string) (net.Conn, error) {
	return nil, errors.New("Dial: the relay must dial a replica")
}

func (s *replicaSet) PickReplica(agent, server, tag string) (string, ReplicaRoute) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tag != "" {
		if _, ok := s.addr[tag]; ok && !s.gone[tag] {
			return tag, ReplicaOK
		}
		return "", ReplicaSessionGone
	}
	for range replicaTags {
		t := replicaTags[s.next%len(replicaTags)]
		s.next++
		if !s.gone[t] {
			return t, ReplicaOK
		}
	}
	return "", ReplicaOffline
}

func (s *replicaSet) DialReplica(ctx context.Context, agent, replica string) (net.Conn, error) {
	s.mu.Lock()
	addr := s.addr[replica]
	s.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func newReplicaRelay(t *testing.T) (*replicaSet, string) {
	set, _, addr := newReplicaHandler(t, nil)
	return set, addr
}

// newReplicaHandler is newReplicaRelay with its Handler, whose Config
// mod may change first.
func newReplicaHandler(t *testing.T, mod func(*Config)) (*replicaSet, *Handler, string) {
	t.Helper()
	set := &replicaSet{addr: map[string]string{}, gone: map[string]bool{}}
	for _, tag := range replicaTags {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("X-Replica", tag)
			w.Header().Set("X-Got-Session", r.Header.Get("Mcp-Session-Id"))
			w.Header().Set("X-Got-Client", r.Header.Get(ClientHeader))
			w.Header()["X-Got-Tools"] = r.Header.Values(ToolsHeader)
			if r.Header.Get("Mcp-Session-Id") == "" {
				w.Header().Set("Mcp-Session-Id", "sess-"+tag[:1]) // initialize
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
		}))
		t.Cleanup(func() {
			srv.CloseClientConnections()
			srv.Close()
		})
		set.addr[tag] = srv.Listener.Addr().String()
	}
	cfg := Config{
		Agents:      set,
		KnownAgents: []string{"dc1"},
		Clients:     []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"*/*"}}},
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := NewHandler(cfg)
	require.NoError(t, err)
	addr, _ := startFront(t, h, nil)
	return set, h, addr
}

// post sends one POST on a connection of its own; extra are header lines.
func post(t *testing.T, addr string, extra ...string) *http.Response {
	t.Helper()
	r, _ := postBody(t, addr, extra...)
	return r
}

// postBody is post with the answer's body.
func postBody(t *testing.T, addr string, extra ...string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	body := `{"jsonrpc":"2.0","id":1,"method":"ping"}`
	req := "POST /dc1/notes/mcp HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ci-token\r\nContent-Type: application/json\r\n"
	for _, e := range extra {
		req += e + "\r\n"
	}
	req += fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(body), body)
	_, err = io.WriteString(c, req)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// With replicas the relay spreads new sessions, hands the client
// "TAG.ID", routes "TAG.ID" to replica TAG with ID alone, answers 404
// session_not_found for a replica that is gone, and passes an id it did
// not make on as it is: on the fast path and on net/http's.
func TestReplicaRouting(t *testing.T) {
	for _, path := range []struct{ name, extra string }{
		{"fast", "X-Path: fast"},
		{"net/http", "Connection: X-Force"}, // a Connection option sends it to net/http
	} {
		t.Run(path.name, func(t *testing.T) {
			set, addr := newReplicaRelay(t)
			got := map[string]string{}
			for range 2 {
				r := post(t, addr, path.extra)
				require.Equal(t, http.StatusOK, r.StatusCode)
				tag := r.Header.Get("X-Replica")
				require.Equal(t, tag+".sess-"+tag[:1], r.Header.Get("Mcp-Session-Id"), "the client's id names the replica")
				got[tag] = r.Header.Get("Mcp-Session-Id")
			}
			require.Len(t, got, 2, "two new sessions, one per replica: %v", got)

			for tag, sid := range got {
				for range 3 {
					r := post(t, addr, path.extra, "Mcp-Session-Id: "+sid)
					require.Equal(t, http.StatusOK, r.StatusCode)
					require.Equal(t, tag, r.Header.Get("X-Replica"), "session %s", sid)
					require.Equal(t, "sess-"+tag[:1], r.Header.Get("X-Got-Session"), "the agent gets its own id back")
				}
			}

			r := post(t, addr, path.extra, "Mcp-Session-Id: not-ours")
			require.Equal(t, http.StatusOK, r.StatusCode)
			require.Equal(t, "not-ours", r.Header.Get("X-Got-Session"), "an id the relay did not make passes as it is")

			set.mu.Lock()
			set.gone["bbbbbbbb"] = true
			set.mu.Unlock()
			r = post(t, addr, path.extra, "Mcp-Session-Id: "+got["bbbbbbbb"])
			require.Equal(t, http.StatusNotFound, r.StatusCode, "a session of a replica that is gone")
			r = post(t, addr, path.extra, "Mcp-Session-Id: "+got["aaaaaaaa"])
			require.Equal(t, http.StatusOK, r.StatusCode, "the other replica's session carries on")
			for range 3 {
				r = post(t, addr, path.extra)
				require.Equal(t, "aaaaaaaa", r.Header.Get("X-Replica"), "new sessions go to the replica left")
			}
			r = post(t, addr, path.extra, "Mcp-Session-Id: a", "Mcp-Session-Id: b")
			require.Equal(t, http.StatusBadRequest, r.StatusCode, "two session ids")
		})
	}
}
