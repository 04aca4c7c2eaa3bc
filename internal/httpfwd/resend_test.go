package httpfwd

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestNoResendOnceSent: the upstream reads a request on a pooled
// connection and closes it without answering (it died, or ran the request
// and crashed). A POST is not sent again — the upstream may have carried
// it out — and fails with OutcomeUnknown; a GET is sent again on a fresh
// connection. Both the wire-form path (ForwardRaw) and the net/http one
// (Forward).
func TestNoResendOnceSent(t *testing.T) {
	for _, path := range []string{"ForwardRaw", "Forward"} {
		for _, method := range []string{http.MethodPost, http.MethodGet} {
			t.Run(path+"/"+method, func(t *testing.T) {
				u, f := newRawUpstream(t, func(n int) (string, bool) {
					if n == 0 {
						return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false
					}
					return "", true // read the request, then hang up
				})
				send := func() error {
					if path == "Forward" {
						r := httptest.NewRequest(method, "/", nil)
						if method == http.MethodPost {
							r = httptest.NewRequest(method, "/", strings.NewReader("{}"))
						}
						return f.Forward(httptest.NewRecorder(), r, Request{Host: "up", RequestURI: "/"})
					}
					req := &RawRequest{Head: rawHead(method, "/"), ContentLength: -1}
					if method == http.MethodPost {
						req.ContentLength, req.Body = 2, []byte("{}")
					}
					_, err := exchange(t, f, req)
					return err
				}
				require.NoError(t, send())
				err := send()
				if method == http.MethodGet {
					require.NoError(t, err, "a GET is sent again")
					require.Equal(t, int32(3), u.requests.Load())
					require.Equal(t, int32(2), u.accepted.Load())
					return
				}
				var ue *UpstreamError
				require.ErrorAs(t, err, &ue)
				require.True(t, ue.OutcomeUnknown, "%v: outcome unknown", err)
				require.Equal(t, int32(2), u.requests.Load(), "the POST reached the upstream once")
				require.Equal(t, int32(1), u.accepted.Load(), "no second connection for it")
			})
		}
	}
}

// TestAliveKeepsTLSConnections: the idle check peeks at the socket under
// a TLS connection; what TLS sends between exchanges in normal use (TLS
// 1.3 session tickets come before the first answer) does not make a live
// connection look dead: sequential exchanges share one connection.
func TestAliveKeepsTLSConnections(t *testing.T) {
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(up.Close)
	var dials atomic.Int32
	cfg := up.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	f := New(func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		d := &tls.Dialer{Config: cfg}
		return d.DialContext(ctx, "tcp", up.Listener.Addr().String())
	}, Options{})
	t.Cleanup(f.Close)
	for range 10 {
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		err := f.ForwardRaw(ctx, &out, &RawRequest{Head: rawHead("POST", "/"), ContentLength: 2, Body: []byte("{}")})
		cancel()
		require.NoError(t, err)
		require.True(t, strings.HasSuffix(out.String(), "ok"), out.String())
	}
	require.Equal(t, int32(1), dials.Load(), "one TLS connection for all exchanges")
}
