//go:build unix

package mcpproxy

import "net/http"

// applyPolicy checks a client's message to a stdio server against the
// policy: a refused request is answered here (refused true); a list
// request gets the filter for its response.
func (srv *stdioServer) applyPolicy(w http.ResponseWriter, r *http.Request, m *Message, body []byte, stateless bool) (lf *listFilter, refused bool) {
	if m.Kind != KindRequest {
		return nil, false
	}
	v, ok := viewFor(srv.cfg.Name, srv.policy, r.Header)
	if !ok {
		return nil, false
	}
	t, terr := TargetOf(body, m)
	if ref := v.decide(t, terr); ref != nil {
		srv.log.Info("request refused by policy", "client", clientOf(r), "method", t.Method, "name", t.Name, "reason", ref.reason)
		writeRefusal(w, m.ID, ref, stateless)
		return nil, true
	}
	if t.List != ListNone && v.filtersLists() {
		return &listFilter{v: v, kind: t.List}, false
	}
	return nil, false
}
