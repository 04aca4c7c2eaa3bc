package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The attacks on the relay's HTTP front: who may call, what, and whether
// the bytes on the wire can make the relay decide one thing and forward
// another.

// advRefusedByRelay sends one exchange with the given Authorization value (""
// for none) and extra headers to path and asserts the relay's own refusal.
func advRefusedByRelay(path, authorization string, status int, reason string, extra ...string) func(*testing.T, *advEnv) {
	return func(t *testing.T, e *advEnv) {
		c := e.dialHTTP(t)
		h := advMCPHeaders("")
		if authorization != "" {
			h = append(h, "Authorization: "+authorization)
		}
		h = append(h, extra...)
		c.send(advHTTPReq(http.MethodPost, path, h, advInit(1)))
		r := c.answer()
		advWantError(t, status, reason, r.StatusCode, r.Body)
		if status == http.StatusUnauthorized {
			require.Contains(t, r.Header.Get("WWW-Authenticate"), "Bearer", "401 names the scheme")
		}
	}
}

// advBadHead sends raw bytes and asserts a 400 (or status) answer, then the
// connection closed: a malformed head leaves no state to continue from.
func advBadHead(raw string, status int) func(*testing.T, *advEnv) {
	return func(t *testing.T, e *advEnv) {
		c := e.dialHTTP(t)
		c.send(raw)
		r := c.answer()
		require.Equal(t, status, r.StatusCode, "body %.300s", r.Body)
		require.NotContains(t, r.Body, `"result"`, "nothing was forwarded")
		c.closed(10 * time.Second)
	}
}

// advHeadTooLarge sends a request whose head is over the relay's 1 MiB bound:
// the relay answers 400 (bad_request, "head too large") without reading
// on, and closes.
func advHeadTooLarge(raw string) func(*testing.T, *advEnv) {
	return func(t *testing.T, e *advEnv) {
		c := e.dialHTTP(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = c.c.SetWriteDeadline(time.Now().Add(20 * time.Second))
			_, _ = c.c.Write([]byte(raw)) // fails once the relay closes
		}()
		defer func() { c.c.Close(); <-done }()
		r := c.answer()
		advWantError(t, http.StatusBadRequest, "bad_request", r.StatusCode, r.Body)
		require.Contains(t, r.Body, "head too large")
		c.closed(10 * time.Second)
	}
}

func authCases() []advAttack {
	const wiki = "/dc1/wiki/mcp"
	bearer := func(tok string) string { return "Bearer " + tok }
	lookalike := strings.Replace(advAliceToken, "a", "\u0430", 1) // Cyrillic a
	return []advAttack{
		{category: "auth", name: "no_token", run: advRefusedByRelay(wiki, "", 401, "unauthorized")},
		{category: "auth", name: "wrong_token", run: advRefusedByRelay(wiki, bearer("adv-mallory-0123456789abcdef"), 401, "unauthorized")},
		{category: "auth", name: "agent_token_as_client_token", run: advRefusedByRelay(wiki, bearer(advDC1Token), 401, "unauthorized")},
		{category: "auth", name: "token_hash_as_bearer", run: advRefusedByRelay(wiki, bearer(sha256Hex(advAliceToken)), 401, "unauthorized")},
		{category: "auth", name: "token_with_one_byte_more", run: advRefusedByRelay(wiki, bearer(advAliceToken+"x"), 401, "unauthorized")},
		{category: "auth", name: "token_prefix", run: advRefusedByRelay(wiki, bearer(advAliceToken[:len(advAliceToken)-1]), 401, "unauthorized")},
		{category: "auth", name: "token_in_upper_case", run: advRefusedByRelay(wiki, bearer(strings.ToUpper(advAliceToken)), 401, "unauthorized")},
		{category: "auth", name: "unicode_lookalike_token", run: advRefusedByRelay(wiki, bearer(lookalike), 401, "unauthorized")},
		{category: "auth", name: "token_in_query_string", run: advRefusedByRelay(wiki+"?access_token="+advAliceToken, "", 401, "unauthorized")},
		{category: "auth", name: "basic_auth_with_the_token", run: advRefusedByRelay(wiki,
			"Basic "+base64.StdEncoding.EncodeToString([]byte("alice:"+advAliceToken)), 401, "unauthorized")},
		{category: "auth", name: "other_scheme_with_the_token", run: advRefusedByRelay(wiki, "Token "+advAliceToken, 401, "unauthorized")},
		{category: "auth", name: "scheme_without_token", run: advRefusedByRelay(wiki, "Bearer", 401, "unauthorized")},
		{category: "auth", name: "empty_bearer", run: advRefusedByRelay(wiki, "Bearer  ", 401, "unauthorized")},
		{category: "auth", name: "token_in_cookie", run: advRefusedByRelay(wiki, "", 401, "unauthorized", "Cookie: token="+advAliceToken)},
		{category: "auth", name: "token_in_proxy_authorization", run: advRefusedByRelay(wiki, "", 401, "unauthorized", "Proxy-Authorization: "+bearer(advAliceToken))},
		{category: "auth", name: "forged_client_header_without_token", run: advRefusedByRelay(wiki, "", 401, "unauthorized", "X-Mcptun-Client: alice")},
		{category: "auth", name: "huge_authorization_header", run: advRefusedByRelay(wiki, bearer(strings.Repeat("A", 64<<10)), 401, "unauthorized")},
		// Both paths (fast path and net/http) take the first
		// Authorization line; a valid second one must not count.
		{category: "auth", name: "valid_token_in_second_authorization_header", run: advRefusedByRelay(wiki,
			bearer("adv-mallory-0123456789abcdef"), 401, "unauthorized", "Authorization: "+bearer(advAliceToken))},
		{category: "auth", name: "guessing_is_throttled", run: func(t *testing.T, e *advEnv) {
			// Wrong tokens from one address: past the allowance (10 at
			// once) it gets 429 before its token is looked at, a right one
			// too; another address is not affected.
			ip := e.attackerIP()
			try := func(tok string) rawResp {
				c := e.dialHTTPFrom(t, ip)
				c.send(advHTTPReq(http.MethodPost, wiki, advMCPHeaders(tok), advInit(1)))
				return c.answer()
			}
			var r rawResp
			for i := 0; i < 20; i++ {
				if r = try("adv-guess-0123456789abcdef"); r.StatusCode != http.StatusUnauthorized {
					break
				}
			}
			advWantError(t, http.StatusTooManyRequests, "auth_throttled", r.StatusCode, r.Body)
			require.NotEmpty(t, r.Header.Get("Retry-After"))
			r = try(advAliceToken)
			advWantError(t, http.StatusTooManyRequests, "auth_throttled", r.StatusCode, r.Body)
			e.victimWorks(t, wiki)
		}},
		{category: "auth", name: "oversized_authorization_header", run: advHeadTooLarge(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders("", "Authorization: Bearer "+strings.Repeat("A", 2<<20)), advInit(1)))},
		{category: "auth", name: "nul_in_token", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders("", "Authorization: Bearer "+advAliceToken+"\x00"), advInit(1)), http.StatusBadRequest)},
	}
}

func scopeCases() []advAttack {
	narrow := func(path string, status int, reason string, extra ...string) func(*testing.T, *advEnv) {
		return advRefusedByRelay(path, "Bearer "+advNarrowToken, status, reason, extra...)
	}
	alice := func(path string, status int, reason string, extra ...string) func(*testing.T, *advEnv) {
		return advRefusedByRelay(path, "Bearer "+advAliceToken, status, reason, extra...)
	}
	// notForwarded: whatever the relay answers to a path that names a
	// server the client may not use, it is no answer of that server.
	notForwarded := func(target string) func(*testing.T, *advEnv) {
		return func(t *testing.T, e *advEnv) {
			c := e.dialHTTP(t)
			c.send(advHTTPReq(http.MethodPost, target, advMCPHeaders(advNarrowToken), advInit(1)))
			r := c.answer()
			require.GreaterOrEqual(t, r.StatusCode, 300, "refused or redirected, got %d %.300s", r.StatusCode, r.Body)
			require.Empty(t, r.Header.Get("Mcp-Session-Id"), "no server minted a session")
			require.NotContains(t, r.Body, `"result"`, "nothing was forwarded")
			if loc := r.Header.Get("Location"); loc != "" {
				// A redirect to the cleaned path is fine only because
				// that path is refused in turn.
				c2 := e.dialHTTP(t)
				c2.send(advHTTPReq(http.MethodPost, loc, advMCPHeaders(advNarrowToken), advInit(1)))
				r2 := c2.answer()
				advWantError(t, http.StatusForbidden, "forbidden", r2.StatusCode, r2.Body)
			}
		}
	}
	return []advAttack{
		{category: "scope", name: "other_server_of_the_allowed_agent", run: narrow("/dc1/wiki/mcp", 403, "forbidden")},
		{category: "scope", name: "allowed_server_name_on_another_agent", run: narrow("/dc2/notes/mcp", 403, "forbidden")},
		{category: "scope", name: "agent_not_in_allow_list", run: narrow("/dc3/notes/mcp", 403, "forbidden")},
		{category: "scope", name: "agent_not_in_the_relays_config", run: alice("/dc9/notes/mcp", 403, "forbidden")},
		{category: "scope", name: "server_the_agent_does_not_offer", run: alice("/dc1/secret/mcp", 404, "unknown_server")},
		{category: "scope", name: "agent_name_in_upper_case", run: alice("/DC1/wiki/mcp", 403, "forbidden")},
		{category: "scope", name: "server_name_in_upper_case", run: narrow("/dc1/NOTES/mcp", 403, "forbidden")},
		{category: "scope", name: "dot_dot_segment", run: notForwarded("/dc1/notes/../wiki/mcp")},
		{category: "scope", name: "encoded_dot_dot_segment", run: notForwarded("/dc1/notes/%2e%2e/wiki/mcp")},
		{category: "scope", name: "encoded_slash_in_agent_segment", run: narrow("/dc1%2Fnotes/wiki/mcp", 403, "forbidden")},
		{category: "scope", name: "encoded_slash_in_server_segment", run: notForwarded("/dc1/notes%2F..%2Fwiki/mcp")},
		{category: "scope", name: "percent_encoded_names", run: narrow("/%64c1/%77iki/mcp", 403, "forbidden")},
		{category: "scope", name: "double_slash", run: notForwarded("//dc1/wiki/mcp")},
		{category: "scope", name: "backslash_traversal", run: narrow(`/dc1/notes\..\wiki/mcp`, 403, "forbidden")},
		{category: "scope", name: "trailing_slash", run: alice("/dc1/wiki/mcp/", 404, "not_found")},
		{category: "scope", name: "extra_segment_after_mcp", run: alice("/dc1/wiki/mcp/extra", 404, "not_found")},
		{category: "scope", name: "allowed_path_in_query_string", run: narrow("/dc1/wiki/mcp?/dc1/notes/mcp", 403, "forbidden")},
		{category: "scope", name: "absolute_form_target", run: narrow("http://relay.test/dc1/wiki/mcp", 403, "forbidden")},
		{category: "scope", name: "absolute_form_to_another_authority", run: narrow("http://127.0.0.1:1/dc1/wiki/mcp", 403, "forbidden")},
		{category: "scope", name: "foreign_origin_dns_rebinding", run: alice("/dc1/wiki/mcp", 403, "origin_not_allowed",
			"Origin: http://evil.example", "Host: evil.example")},
		{category: "scope", name: "loopback_origin_with_foreign_host", run: alice("/dc1/wiki/mcp", 403, "origin_not_allowed",
			"Origin: http://127.0.0.1", "Host: relay.example.com")},
		{category: "scope", name: "null_origin", run: alice("/dc1/wiki/mcp", 403, "origin_not_allowed", "Origin: null")},
		{category: "scope", name: "two_host_headers", run: advBadHead(advHTTPReq(http.MethodPost, "/dc1/notes/mcp",
			advMCPHeaders(advNarrowToken, "Host: a.example", "Host: b.example"), advInit(1)), http.StatusBadRequest)},
		{category: "scope", name: "connect_to_an_internal_address", run: func(t *testing.T, e *advEnv) {
			s := advNewSentinel(t)
			c := e.dialHTTP(t)
			c.send(fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", s.addr(), s.addr(), advAliceToken))
			r := c.answer()
			require.GreaterOrEqual(t, r.StatusCode, 400, "CONNECT refused: %d %.200s", r.StatusCode, r.Body)
			require.Zero(t, s.conns.Load(), "the relay connected to the address")
		}},
	}
}

func smugglingCases() []advAttack {
	const wiki = "/dc1/wiki/mcp"
	init := advInit(1)
	// pipelined asserts the statuses of requests sent in one write.
	pipelined := func(reqs []string, statuses ...int) func(*testing.T, *advEnv) {
		return func(t *testing.T, e *advEnv) {
			c := e.dialHTTP(t)
			c.send(strings.Join(reqs, ""))
			for i, want := range statuses {
				r := c.answer()
				require.Equal(t, want, r.StatusCode, "answer %d of %d: %.300s", i+1, len(statuses), r.Body)
			}
		}
	}
	authorized := advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advAliceToken), init)
	return []advAttack{
		{category: "smuggling", name: "content_length_and_transfer_encoding", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advNarrowToken, "Content-Length: 4", "Transfer-Encoding: chunked"), "0\r\n\r\n"+advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advNarrowToken), init)), 400)},
		{category: "smuggling", name: "two_different_content_lengths", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advAliceToken, fmt.Sprintf("Content-Length: %d", len(init)), "Content-Length: 0"), init), 400)},
		{category: "smuggling", name: "bad_chunk_size", run: func(t *testing.T, e *advEnv) {
			c := e.dialHTTP(t)
			c.send(advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advAliceToken, "Transfer-Encoding: chunked"), "zz\r\n"+init+"\r\n0\r\n\r\n"))
			r := c.answer()
			advWantError(t, http.StatusBadRequest, "bad_request", r.StatusCode, r.Body)
		}},
		{category: "smuggling", name: "unsupported_transfer_encoding", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advAliceToken, "Transfer-Encoding: gzip, chunked"), "0\r\n\r\n"), http.StatusNotImplemented)},
		{category: "smuggling", name: "space_before_colon", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advNarrowToken, "Transfer-Encoding : chunked"), init), 400)},
		{category: "smuggling", name: "obsolete_line_folding", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advNarrowToken, "X-Note: a", " Authorization: Bearer "+advAliceToken), init), 400)},
		{category: "smuggling", name: "nul_in_header_value", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advAliceToken, "X-Note: a\x00b"), init), 400)},
		{category: "smuggling", name: "bare_cr_in_header_value", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advNarrowToken, "X-Note: a\rAuthorization: Bearer "+advAliceToken), init), 400)},
		{category: "smuggling", name: "http_0_9_request_line", run: func(t *testing.T, e *advEnv) {
			c := e.dialHTTP(t)
			c.send("GET " + wiki + "\r\n\r\n")
			r := c.answer()
			require.Equal(t, http.StatusBadRequest, r.StatusCode, "body %.200s", r.Body)
			c.closed(10 * time.Second)
		}},
		{category: "smuggling", name: "http2_preface_on_http1_port", run: func(t *testing.T, e *advEnv) {
			c := e.dialHTTP(t)
			c.send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
			r := c.answer()
			require.GreaterOrEqual(t, r.StatusCode, 400, "body %.200s", r.Body)
			c.closed(10 * time.Second)
		}},
		{category: "smuggling", name: "overlong_header_line", run: advHeadTooLarge(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advAliceToken, "X-Long: "+strings.Repeat("x", 3<<20/2)), init))},
		{category: "smuggling", name: "too_many_headers", run: func(t *testing.T, e *advEnv) {
			h := advMCPHeaders(advAliceToken)
			for i := range 20000 {
				h = append(h, fmt.Sprintf("X-H%05d: %s", i, strings.Repeat("v", 50)))
			}
			advHeadTooLarge(advHTTPReq(http.MethodPost, wiki, h, init))(t, e)
		}},
		{category: "smuggling", name: "pipelined_request_to_a_server_out_of_scope", run: pipelined([]string{
			advHTTPReq(http.MethodPost, "/dc1/notes/mcp", advMCPHeaders(advNarrowToken), `{"jsonrpc":"2.0","id":1,"method":"ping"}`),
			advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advNarrowToken), init),
		}, http.StatusBadRequest, http.StatusForbidden)},
		{category: "smuggling", name: "pipelined_request_without_token", run: pipelined([]string{
			authorized, advHTTPReq(http.MethodPost, wiki, advMCPHeaders(""), init),
		}, http.StatusOK, http.StatusUnauthorized)},
		{category: "smuggling", name: "pipelined_after_a_refusal", run: pipelined([]string{
			advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advNarrowToken), init),
			authorized,
			advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advNarrowToken), init),
		}, http.StatusForbidden, http.StatusOK, http.StatusForbidden)},
		{category: "smuggling", name: "request_hidden_after_a_short_content_length", run: func(t *testing.T, e *advEnv) {
			hidden := advHTTPReq(http.MethodPost, wiki, advMCPHeaders(""), init)
			raw := advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advAliceToken, fmt.Sprintf("Content-Length: %d", len(init))), init) + hidden
			pipelined([]string{raw}, http.StatusOK, http.StatusUnauthorized)(t, e)
		}},
		{category: "smuggling", name: "request_hidden_after_the_last_chunk", run: func(t *testing.T, e *advEnv) {
			hidden := advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advNarrowToken), init)
			body := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(init), init)
			raw := advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advAliceToken, "Transfer-Encoding: chunked"), body) + hidden
			pipelined([]string{raw}, http.StatusOK, http.StatusForbidden)(t, e)
		}},
		{category: "smuggling", name: "expect_continue_without_token", run: func(t *testing.T, e *advEnv) {
			// The body is a request with a token: unread, it must not be
			// taken for the next request.
			hidden := advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advAliceToken), init)
			c := e.dialHTTP(t)
			c.send(advHTTPReq(http.MethodPost, wiki, advMCPHeaders("", "Expect: 100-continue", fmt.Sprintf("Content-Length: %d", len(hidden))), hidden))
			r := c.answer()
			advWantError(t, http.StatusUnauthorized, "unauthorized", r.StatusCode, r.Body)
			c.closed(10 * time.Second)
		}},
		{category: "smuggling", name: "content_length_overflow", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advAliceToken, "Content-Length: 99999999999999999999"), init), 400)},
		{category: "smuggling", name: "negative_content_length", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advAliceToken, "Content-Length: -1"), init), 400)},
		{category: "smuggling", name: "signed_content_length", run: advBadHead(advHTTPReq(http.MethodPost, wiki,
			advMCPHeaders(advAliceToken, fmt.Sprintf("Content-Length: +%d", len(init))), init), 400)},
	}
}

func sessionCases() []advAttack {
	const notes, wiki = "/dc1/notes/mcp", "/dc1/wiki/mcp"
	const tcpNotes = "/dc2/notes/mcp"
	// intrude: bob sends one exchange with alice's session; it must be as
	// if the session did not exist, and alice's session must go on.
	intrude := func(path, method string, body string, hdr map[string]string) func(*testing.T, *advEnv) {
		return func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, path, advAliceToken)
			r := e.do(t, method, path, advBobToken, sid, hdr, body)
			advWantRPCErrorStatus(t, http.StatusNotFound, r)
			require.NotContains(t, r.Body, "intruder", "bob's call did not run in alice's session")
			e.echoWorks(t, path, advAliceToken, sid, "alice's session goes on")
		}
	}
	postIntrusion := advEcho(9, "intruder")
	return []advAttack{
		{category: "session", name: "post_into_another_clients_stdio_session", run: intrude(notes, http.MethodPost, postIntrusion, nil)},
		{category: "session", name: "delete_another_clients_stdio_session", run: intrude(notes, http.MethodDelete, "", nil)},
		{category: "session", name: "open_get_stream_of_another_clients_session", run: func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, notes, advAliceToken)
			r := e.openStream(t, notes, advBobToken, sid, nil)
			advWantRPCErrorStatus(t, http.StatusNotFound, r)
			e.echoWorks(t, notes, advAliceToken, sid, "alice's session goes on")
		}},
		{category: "session", name: "resume_another_clients_stream_with_last_event_id", run: func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, notes, advAliceToken)
			// An SSE answer, so its events enter the replay buffer.
			r := e.do(t, http.MethodPost, notes, advAliceToken, sid,
				map[string]string{"Accept": "text/event-stream, application/json"}, advEcho(3, "alice's secret result"))
			require.Equal(t, http.StatusOK, r.StatusCode, r.Body)
			require.Contains(t, r.Header.Get("Content-Type"), "text/event-stream")
			first := ""
			for _, l := range strings.Split(r.Body, "\n") {
				if id, ok := strings.CutPrefix(l, "id: "); ok {
					first = strings.TrimSpace(id)
					break
				}
			}
			require.NotEmpty(t, first, "alice's stream carries event ids: %s", r.Body)
			g := e.openStream(t, notes, advBobToken, sid, map[string]string{"Last-Event-ID": first})
			require.NotContains(t, g.Body, "alice's secret result", "bob replayed alice's result")
			advWantRPCErrorStatus(t, http.StatusNotFound, g)
		}},
		{category: "session", name: "post_into_another_clients_url_session", run: intrude(wiki, http.MethodPost, postIntrusion, nil)},
		{category: "session", name: "delete_another_clients_url_session", run: intrude(wiki, http.MethodDelete, "", nil)},
		{category: "session", name: "get_stream_of_another_clients_url_session", run: func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, wiki, advAliceToken)
			r := e.openStream(t, wiki, advBobToken, sid, nil)
			advWantRPCErrorStatus(t, http.StatusNotFound, r)
		}},
		{category: "session", name: "post_into_another_clients_session_over_tcp", run: intrude(tcpNotes, http.MethodPost, postIntrusion, nil)},
		{category: "session", name: "delete_another_clients_session_over_tcp", run: intrude(tcpNotes, http.MethodDelete, "", nil)},
		{category: "session", name: "forged_client_header_with_another_clients_session", run: intrude(notes, http.MethodPost, postIntrusion,
			map[string]string{"X-Mcptun-Client": "alice"})},
		{category: "session", name: "guessed_session_id", run: func(t *testing.T, e *advEnv) {
			r := e.do(t, http.MethodPost, notes, advBobToken, strings.Repeat("0123456789abcdef", 2), nil, postIntrusion)
			advWantRPCErrorStatus(t, http.StatusNotFound, r)
		}},
		{category: "session", name: "session_id_without_token", run: func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, notes, advAliceToken)
			r := e.do(t, http.MethodPost, notes, "", sid, nil, postIntrusion)
			advWantError(t, http.StatusUnauthorized, "unauthorized", r.StatusCode, r.Body)
			e.echoWorks(t, notes, advAliceToken, sid, "alice's session goes on")
		}},
		{category: "session", name: "session_of_another_server", run: func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, notes, advAliceToken)
			r := e.do(t, http.MethodPost, wiki, advAliceToken, sid, nil, postIntrusion)
			advWantRPCErrorStatus(t, http.StatusNotFound, r)
		}},
	}
}

// openStream sends a GET for the session's stream and returns its status
// and, unless it is an open event stream, its body; an event stream is
// returned with what arrived within 2 s (it would not end by itself).
func (e *advEnv) openStream(t *testing.T, path, token, sid string, hdr map[string]string) rawResp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.relayURL+path, nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("MCP-Protocol-Version", advProtocol)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Mcp-Session-Id", sid)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return rawResp{resp.StatusCode, resp.Header, string(b)}
	}
	var got strings.Builder
	stop := time.AfterFunc(2*time.Second, cancel)
	defer stop.Stop()
	_, _ = io.Copy(&got, resp.Body)
	return rawResp{resp.StatusCode, resp.Header, got.String()}
}

// advWantRPCErrorStatus asserts status with a JSON-RPC error body.
func advWantRPCErrorStatus(t *testing.T, status int, r rawResp) {
	t.Helper()
	require.Equal(t, status, r.StatusCode, "status; body %.300s", r.Body)
	require.Contains(t, r.Body, `"error"`, "a JSON-RPC error body: %.300s", r.Body)
}

func exhaustionCases() []advAttack {
	const notes, wiki = "/dc1/notes/mcp", "/dc1/wiki/mcp"
	return []advAttack{
		{category: "exhaustion", name: "message_over_the_size_limit", run: func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, notes, advBobToken)
			c := e.dialHTTP(t)
			// 64 MiB is the bridge's limit; the body is valid JSON-RPC
			// up to its size.
			pad := strings.Repeat("a", 64<<20+16)
			body := `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"` + pad + `"}}}`
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = c.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
				_, _ = c.c.Write([]byte(advHTTPReq(http.MethodPost, notes, advMCPHeaders(advBobToken, "Mcp-Session-Id: "+sid), body)))
			}()
			r := c.answer()
			c.c.Close()
			<-done
			advWantError(t, http.StatusRequestEntityTooLarge, "", r.StatusCode, r.Body)
			e.victimWorks(t, notes)
		}},
		{category: "exhaustion", name: "absurd_content_length", run: func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, notes, advBobToken)
			c := e.dialHTTP(t)
			c.send(advHTTPReq(http.MethodPost, notes, advMCPHeaders(advBobToken, "Mcp-Session-Id: "+sid, "Content-Length: 9223372036854775807"), `{"jsonrpc":`))
			r := c.answer()
			advWantError(t, http.StatusRequestEntityTooLarge, "", r.StatusCode, r.Body)
		}},
		{category: "exhaustion", name: "deeply_nested_json", run: func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, notes, advBobToken)
			r := e.do(t, http.MethodPost, notes, advBobToken, sid, nil,
				`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":`+strings.Repeat("[", 1<<20)+strings.Repeat("]", 1<<20)+`}`)
			require.Less(t, r.StatusCode, 500, "answered, not crashed: %.200s", r.Body)
			e.victimWorks(t, notes)
		}},
		{category: "exhaustion", name: "second_get_stream_on_one_session", run: func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, notes, advBobToken)
			c := e.dialHTTP(t)
			c.send(advHTTPReq(http.MethodGet, notes, []string{"Authorization: Bearer " + advBobToken, "Accept: text/event-stream",
				"MCP-Protocol-Version: " + advProtocol, "Mcp-Session-Id: " + sid}, ""))
			require.NoError(t, c.c.SetReadDeadline(time.Now().Add(20*time.Second)))
			resp, err := http.ReadResponse(c.br, nil)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			r := e.openStream(t, notes, advBobToken, sid, nil)
			advWantRPCErrorStatus(t, http.StatusConflict, r)
		}},
		{category: "exhaustion", name: "many_small_requests_pipelined", run: func(t *testing.T, e *advEnv) {
			const n = 200
			var b strings.Builder
			for range n {
				b.WriteString(advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advBobToken), advInit(1)))
			}
			c := e.dialHTTP(t)
			go func() { _, _ = c.c.Write([]byte(b.String())) }()
			for i := range n {
				r := c.answer()
				require.Equal(t, http.StatusOK, r.StatusCode, "answer %d: %.200s", i, r.Body)
			}
			e.victimWorks(t, wiki)
		}},
		{category: "exhaustion", name: "many_sessions_from_one_client", run: func(t *testing.T, e *advEnv) {
			var wg sync.WaitGroup
			var mu sync.Mutex
			var sids []string
			for range 16 {
				wg.Go(func() {
					r, err := e.doCtx(context.Background(), http.MethodPost, notes, advBobToken, "", nil, advInit(1))
					if err == nil && r.Header.Get("Mcp-Session-Id") != "" {
						mu.Lock()
						sids = append(sids, r.Header.Get("Mcp-Session-Id"))
						mu.Unlock()
					}
				})
			}
			defer func() {
				for _, sid := range sids {
					_, _ = e.doCtx(context.Background(), http.MethodDelete, notes, advBobToken, sid, nil, "")
				}
			}()
			wg.Wait()
			e.victimWorks(t, notes)
		}},
		{category: "exhaustion", name: "one_client_over_its_session_limit", run: func(t *testing.T, e *advEnv) {
			// An agent whose notes server allows two sessions per client:
			// bob's third, while both are busy, is refused naming the
			// limit; alice still gets in.
			e.startAgent(t, "dc4", advDC4Token, fmt.Sprintf("{address: %q, ca_file: %q, transport: quic}", e.tunnelAddr, e.relayCert),
				fmt.Sprintf("  - {name: notes, command: [%q, \"--stdio\"], limits: {sessions_per_client: 2}}\n", fixtureBin), "")
			const dc4 = "/dc4/notes/mcp"
			e.waitOnline(t, dc4)
			for range 2 {
				r := e.do(t, http.MethodPost, dc4, advBobToken, "", nil,
					`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"`+advProtocol+`","capabilities":{"sampling":{}},"clientInfo":{"name":"bob","version":"1"}}}`)
				require.Equal(t, http.StatusOK, r.StatusCode, r.Body)
				sid := r.Header.Get("Mcp-Session-Id")
				t.Cleanup(func() { _, _ = e.doCtx(context.Background(), http.MethodDelete, dc4, advBobToken, sid, nil, "") })
				// A call waiting on bob (the server asked him for a
				// sampling answer, which never comes) makes the session
				// busy: it cannot be ended to make room.
				c := e.dialHTTP(t)
				c.send(advHTTPReq(http.MethodPost, dc4, advMCPHeaders(advBobToken, "Mcp-Session-Id: "+sid),
					`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"test_sampling","arguments":{"prompt":"wait"}}}`))
				require.NoError(t, c.c.SetReadDeadline(time.Now().Add(20*time.Second)))
				resp, err := http.ReadResponse(c.br, nil)
				require.NoError(t, err)
				require.Equal(t, http.StatusOK, resp.StatusCode)
				require.Contains(t, resp.Header.Get("Content-Type"), "text/event-stream")
			}
			r := e.do(t, http.MethodPost, dc4, advBobToken, "", nil, advInit(1))
			advWantError(t, http.StatusTooManyRequests, "client_session_limit", r.StatusCode, r.Body)
			require.Empty(t, r.Header.Get("Mcp-Session-Id"))
			e.victimWorks(t, dc4)
		}},
		{category: "exhaustion", name: "connection_flood", run: func(t *testing.T, e *advEnv) {
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for range 300 {
				c, err := net.DialTimeout("tcp", e.httpAddr, 5*time.Second)
				require.NoError(t, err)
				conns = append(conns, c)
			}
			e.victimWorks(t, wiki)
		}},
		{category: "exhaustion", name: "descriptor_flood", run: func(t *testing.T, e *advEnv) {
			// A relay of its own with 300 descriptors: 400 connections
			// exhaust them; once they are gone, the front serves again.
			dir := t.TempDir()
			cfg := filepath.Join(dir, "relay.yaml")
			require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`tunnel: {listen: "127.0.0.1:0", cert_file: %q, key_file: %q}
http: {listen: "127.0.0.1:0"}
agents: [{name: dc1, token_sha256: %q}]
clients: [{name: alice, token_sha256: %q, allow: ["dc1/*"]}]
`, e.relayCert, filepath.Join(e.dir, "relay.key"), sha256Hex(advDC1Token), sha256Hex(advAliceToken))), 0o600))
			p := startProc(t, "relay (300 descriptors)", nil, "/bin/sh", "-c", `ulimit -n 300 && exec "$0" "$@"`, mcptunBin, "relay", "--config", cfg)
			addr := strings.TrimPrefix(p.waitLine(t, relayStarted, 20*time.Second)[2], "http://")
			var conns []net.Conn
			closeAll := func() {
				for _, c := range conns {
					c.Close()
				}
				conns = nil
			}
			defer closeAll()
			for range 400 {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				require.NoError(t, err)
				conns = append(conns, c)
			}
			// Hold them until the relay has run out of descriptors.
			fds := func() int {
				ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
				return len(ents)
			}
			require.Eventually(t, func() bool { return fds() >= 290 }, 10*time.Second, 20*time.Millisecond,
				"the relay accepted the flood (descriptors open: %d)", fds())
			closeAll()
			healthy := func() bool {
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					return false
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Second))
				if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					return false
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			}
			require.Eventually(t, healthy, 10*time.Second, 50*time.Millisecond, "the relay's HTTP front serves again after the flood")
		}},
		{category: "exhaustion", name: "half_sent_bodies", run: func(t *testing.T, e *advEnv) {
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for range 100 {
				c, err := net.DialTimeout("tcp", e.httpAddr, 5*time.Second)
				require.NoError(t, err)
				conns = append(conns, c)
				_, err = c.Write([]byte(advHTTPReq(http.MethodPost, wiki, advMCPHeaders(advBobToken, "Content-Length: 1000"), `{"jsonrpc":"2.0",`)))
				require.NoError(t, err)
			}
			e.victimWorks(t, wiki)
			e.victimWorks(t, notes)
		}},
	}
}

func slowClientCases() []advAttack {
	// neverReads: clients that ask for large answers and never read them
	// must cost only themselves: others' exchanges through the same agent
	// go on.
	neverReads := func(agent, server string) func(*testing.T, *advEnv) {
		return func(t *testing.T, e *advEnv) {
			hog := "/" + agent + "/" + server + "/mcp"
			wiki := "/" + agent + "/wiki/mcp"
			var hogs []*advRawConn
			var bodies []io.Reader
			// In the end the non-reading clients read their answers to the
			// end (or to where the relay cut them), so no exchange is left
			// in flight for the agent's shutdown to wait on.
			defer func() {
				for i, c := range hogs {
					// A 4 KiB window would crawl (an ACK per delayed-ACK tick).
					_ = c.c.(*net.TCPConn).SetReadBuffer(4 << 20)
					_ = c.c.SetReadDeadline(time.Now().Add(60 * time.Second))
					_, err := io.Copy(io.Discard, bodies[i])
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Errorf("non-reading client %d: its answer neither completed nor was cut within 60 s of reading again", i+1)
					}
					c.c.Close()
				}
			}()
			for i := range 3 {
				sid := e.initialize(t, hog, advBobToken)
				c := e.dialHTTP(t)
				// A small receive buffer: the backlog stays in the relay
				// and the tunnel, not in this socket.
				require.NoError(t, c.c.(*net.TCPConn).SetReadBuffer(4<<10))
				c.send(advHTTPReq(http.MethodPost, hog, advMCPHeaders(advBobToken, "Mcp-Session-Id: "+sid),
					fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"large_output","arguments":{"bytes":%d}}}`, i+10, 16<<20)))
				// Read the head and one byte of the body, then no more.
				require.NoError(t, c.c.SetReadDeadline(time.Now().Add(20*time.Second)))
				resp, err := http.ReadResponse(c.br, nil)
				require.NoError(t, err, "no answer for non-reading client %d: the ones before it stalled the agent's tunnel", i+1)
				require.Equal(t, http.StatusOK, resp.StatusCode)
				_, err = resp.Body.Read(make([]byte, 1))
				require.NoError(t, err)
				hogs = append(hogs, c)
				bodies = append(bodies, resp.Body)
			}
			// A generous bound: answers normally take milliseconds.
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			for _, p := range []string{"/" + agent + "/notes/mcp", wiki} {
				r, err := e.doCtx(ctx, http.MethodPost, p, advAliceToken, "", nil, advInit(1))
				require.NoError(t, err, "other clients of %s got no answer within 15 s while three clients did not read", agent)
				require.Equal(t, http.StatusOK, r.StatusCode, "%s: %.300s", p, r.Body)
				sid := r.Header.Get("Mcp-Session-Id")
				r, err = e.doCtx(ctx, http.MethodPost, p, advAliceToken, sid, nil, advEcho(2, "victim unaffected"))
				require.NoError(t, err, "other clients of %s got no answer within 15 s while three clients did not read", agent)
				require.Contains(t, r.Body, "victim unaffected")
				_, _ = e.doCtx(ctx, http.MethodDelete, p, advAliceToken, sid, nil, "")
			}
		}
	}
	return []advAttack{
		{category: "slow", name: "clients_not_reading_large_answers_over_quic", slow: true, run: neverReads("dc1", "wiki")},
		{category: "slow", name: "clients_not_reading_large_answers_over_tcp", slow: true, run: neverReads("dc2", "wiki")},
		{category: "slow", name: "clients_not_reading_large_stdio_answers_over_quic", slow: true, run: neverReads("dc1", "notes")},
		{category: "slow", name: "clients_not_reading_large_stdio_answers_over_tcp", slow: true, run: neverReads("dc2", "notes")},
		{category: "slow", name: "slowloris_head", slow: true, run: func(t *testing.T, e *advEnv) {
			// One header byte every 200 ms: the head is cut once the
			// header timeout (10 s) has passed since it began.
			c := e.dialHTTP(t)
			c.send("POST /dc1/wiki/mcp HTTP/1.1\r\nHost: relay.test\r\n")
			start := time.Now()
			stop := make(chan struct{})
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				tick := time.NewTicker(200 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						if _, err := c.c.Write([]byte("X")); err != nil {
							return
						}
					}
				}
			}()
			defer func() { close(stop); <-wrote }()
			require.NoError(t, c.c.SetReadDeadline(time.Now().Add(25*time.Second)))
			_, err := c.br.ReadByte()
			for err == nil {
				_, err = c.br.ReadByte()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("a head sent byte by byte held the connection for %s", time.Since(start).Round(time.Second))
			}
			require.Less(t, time.Since(start), 20*time.Second, "cut within the 10 s header timeout (generous bound)")
		}},
	}
}
