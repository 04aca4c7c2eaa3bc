package mcpproxy

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mcptun/mcptun/internal/glob"
	"github.com/mcptun/mcptun/internal/ratelimit"
)

// Policy is what the agent lets clients do with one server's tools,
// prompts and resources, whatever the server offers. The agent enforces it
// on both kinds of server (stdio and URL), in both protocol eras: a denied
// or changed tool is left out of tools/list results (each page of a
// paginated list is filtered; nextCursor and list_changed notifications
// pass as they are), and a request naming one (tools/call, prompts/get,
// resources/read, resources/subscribe, completion/complete for a prompt
// or resource) gets a JSON-RPC error from the agent, same id, without
// reaching the server. Names are matched as globs (see matchGlob).
type Policy struct {
	Tools     Rules // tool names
	Prompts   Rules // prompt names
	Resources Rules // resource URIs (templates: their uriTemplate text)
	// ToolRates bound calls of the tools they match, from all clients
	// together: the first entry whose glob matches a tool's name counts
	// its calls.
	ToolRates []ToolRate
	// Pin records a hash of each tool's definition on first sight (in
	// Options.PinFile) and withholds a tool whose definition changed until
	// an operator approves it (ApprovePin).
	Pin bool
}

// Rules allow and deny names by glob. Deny wins; no Allow allows every
// name Deny does not match.
type Rules struct {
	Allow []string
	Deny  []string
}

// ToolRate limits the calls of the tools Tool matches to Rate per second
// on average, in bursts of up to Burst (at least 1).
type ToolRate struct {
	Tool  string
	Rate  float64
	Burst int
}

func (r Rules) set() bool { return len(r.Allow) > 0 || len(r.Deny) > 0 }

// allows reports whether name passes r.
func (r Rules) allows(name string) bool {
	if glob.MatchAny(r.Deny, name) {
		return false
	}
	return len(r.Allow) == 0 || glob.MatchAny(r.Allow, name)
}

func (r Rules) validate(what string) error {
	for i, g := range r.Allow {
		if err := glob.Check(g); err != nil {
			return fmt.Errorf("%s.allow[%d] %q: %w", what, i, g, err)
		}
	}
	for i, g := range r.Deny {
		if err := glob.Check(g); err != nil {
			return fmt.Errorf("%s.deny[%d] %q: %w", what, i, g, err)
		}
	}
	return nil
}

func (p Policy) active() bool {
	return p.Tools.set() || p.Prompts.set() || p.Resources.set() || len(p.ToolRates) > 0 || p.Pin
}

func (p Policy) validate() error {
	for _, x := range []struct {
		what string
		r    Rules
	}{{"tools", p.Tools}, {"prompts", p.Prompts}, {"resources", p.Resources}} {
		if err := x.r.validate(x.what); err != nil {
			return err
		}
	}
	for i, tr := range p.ToolRates {
		if err := glob.Check(tr.Tool); err != nil {
			return fmt.Errorf("tool_rate_limits[%d].tool %q: %w", i, tr.Tool, err)
		}
		if !(tr.Rate > 0) || math.IsInf(tr.Rate, 0) || tr.Burst < 0 {
			return fmt.Errorf("tool_rate_limits[%d]: rate %v and burst %d: want requests per second > 0 and a burst ≥ 0", i, tr.Rate, tr.Burst)
		}
	}
	return nil
}

// policy is a server's Policy in force.
type policy struct {
	server string
	Policy
	rates []*ratelimit.Limiter // by ToolRates index
	pins  *pinStore            // nil unless Pin
	log   *slog.Logger
	// lists says whether list results need rewriting at all.
	lists bool
}

func newPolicy(server string, p Policy, pins *pinStore, log *slog.Logger) *policy {
	if !p.active() {
		return nil
	}
	pol := &policy{server: server, Policy: p, log: log.With("server", server),
		lists: p.Tools.set() || p.Prompts.set() || p.Resources.set() || p.Pin}
	if p.Pin {
		pol.pins = pins
	}
	for _, tr := range p.ToolRates {
		pol.rates = append(pol.rates, ratelimit.New(tr.Rate, tr.Burst))
	}
	return pol
}

// NarrowHeader carries the tool globs the relay allows the client for
// this server, when its allow pattern goes down to tools
// ("dc1/wiki/search_*"): comma-separated, each URL-query-escaped. The
// relay sets it and removes any copy a client sent; the agent intersects
// it with its own policy, so it can only ever take tools away (a forged
// copy could only narrow its sender's own view).
const NarrowHeader = "X-Mcptun-Tools"

// EncodeNarrow renders globs for NarrowHeader.
func EncodeNarrow(globs []string) string {
	esc := make([]string, len(globs))
	for i, g := range globs {
		esc[i] = url.QueryEscape(g)
	}
	return strings.Join(esc, ",")
}

// view is a policy as one request sees it: the agent's own, narrowed by
// the relay's tool globs for the client. Each NarrowHeader line is a set
// of globs, and a tool must match one glob of every line: a second line,
// whoever added it, can only narrow further.
type view struct {
	p      *policy
	server string
	narrow [][]string
	// narrowed is set when NarrowHeader was present: an empty or broken
	// one allows no tool.
	narrowed bool
}

// viewFor returns the view of request headers h. With neither a policy
// nor a narrowing header there is nothing to enforce: ok is false.
func viewFor(server string, p *policy, h http.Header) (v view, ok bool) {
	v.p, v.server = p, server
	vals := h.Values(NarrowHeader)
	if len(vals) > 0 {
		v.narrowed = true
		for _, val := range vals {
			var line []string
			for _, part := range strings.Split(val, ",") {
				g, err := url.QueryUnescape(strings.TrimSpace(part))
				if err != nil || glob.Check(g) != nil {
					continue // an unreadable glob allows nothing
				}
				line = append(line, g)
			}
			v.narrow = append(v.narrow, line)
		}
	}
	return v, p != nil || v.narrowed
}

// refusal is a request the policy does not let through.
type refusal struct {
	status int // HTTP status of a single request's answer (session era)
	code   int
	reason string
	msg    string
	wait   time.Duration // tool_rate_limited: Retry-After
}

func (r *refusal) body(id []byte) []byte {
	data := map[string]any{"reason": r.reason}
	if r.wait > 0 {
		data["retry_after_ms"] = r.wait.Milliseconds()
	}
	return errorBodyStatus(id, r.status, r.code, r.msg, data)
}

// Codes of the policy's refusals: a denied or changed tool is, to the
// client, one that is not there (MCP's "unknown tool" is -32602).
const (
	codePolicyDenied = -32602
	codeToolLimited  = -32000
)

// Reasons of the policy's refusals (README: "Error answers").
const (
	reasonToolDenied      = "tool_denied"
	reasonPromptDenied    = "prompt_denied"
	reasonResourceDenied  = "resource_denied"
	reasonToolChanged     = "tool_changed"
	reasonToolRateLimited = "tool_rate_limited"
	reasonPolicyAmbiguous = "policy_unreadable"
)

func (v view) toolAllowed(name string) (ok, byRelay bool) {
	if v.p != nil && !v.p.Tools.allows(name) {
		return false, false
	}
	for _, line := range v.narrow {
		if !glob.MatchAny(line, name) {
			return false, true
		}
	}
	return true, false
}

func (v view) allows(kind TargetKind, name string) bool {
	switch kind {
	case TargetTool:
		ok, _ := v.toolAllowed(name)
		return ok
	case TargetPrompt:
		return v.p == nil || v.p.Prompts.allows(name)
	case TargetResource:
		return v.p == nil || v.p.Resources.allows(name)
	}
	return true
}

// decide says whether a request with target t passes; nil means it does.
// A tool call that passes takes from its tool's rate limit.
func (v view) decide(t Target, err error) *refusal {
	if err != nil {
		if errors.Is(err, errNoName) && !v.governs(t.Kind) {
			return nil
		}
		return &refusal{status: http.StatusBadRequest, code: codeInvalidRequest, reason: reasonPolicyAmbiguous,
			msg: fmt.Sprintf("mcpproxy: %s refused: the agent's policy cannot read what it names: %v", t.Method, err)}
	}
	server := v.server
	switch t.Kind {
	case TargetTool:
		ok, byRelay := v.toolAllowed(t.Name)
		switch {
		case !ok && byRelay:
			return &refusal{status: http.StatusOK, code: codePolicyDenied, reason: reasonToolDenied,
				msg: fmt.Sprintf("mcpproxy: tool %q of server %q is outside the tools the relay allows this client (its allow patterns)", t.Name, server)}
		case !ok:
			return &refusal{status: http.StatusOK, code: codePolicyDenied, reason: reasonToolDenied,
				msg: fmt.Sprintf("mcpproxy: tool %q of server %q is denied by the agent's tool policy (servers[].tools)", t.Name, server)}
		}
		if v.p == nil {
			return nil
		}
		if v.p.pins != nil && v.p.pins.changed(v.p.server, t.Name) {
			return &refusal{status: http.StatusOK, code: codePolicyDenied, reason: reasonToolChanged,
				msg: fmt.Sprintf("mcpproxy: tool %q of server %q changed its definition since it was pinned and is withheld until an operator approves it (mcptun tools approve %s %s)",
					t.Name, server, server, t.Name)}
		}
		for i, tr := range v.p.ToolRates {
			if !glob.Match(tr.Tool, t.Name) {
				continue
			}
			if wait, ok := v.p.rates[i].Take(); !ok {
				return &refusal{status: http.StatusTooManyRequests, code: codeToolLimited, reason: reasonToolRateLimited, wait: wait,
					msg: fmt.Sprintf("mcpproxy: tool %q of server %q is over its rate limit of %s (tool_rate_limits[%d]); retry in %s",
						t.Name, server, v.p.rates[i], i, wait.Round(time.Millisecond))}
			}
			break
		}
	case TargetPrompt:
		if !v.allows(TargetPrompt, t.Name) {
			return &refusal{status: http.StatusOK, code: codePolicyDenied, reason: reasonPromptDenied,
				msg: fmt.Sprintf("mcpproxy: prompt %q of server %q is denied by the agent's prompt policy (servers[].prompts)", t.Name, server)}
		}
	case TargetResource:
		if !v.allows(TargetResource, t.Name) {
			return &refusal{status: http.StatusOK, code: codePolicyDenied, reason: reasonResourceDenied,
				msg: fmt.Sprintf("mcpproxy: resource %q of server %q is denied by the agent's resource policy (servers[].resources)", t.Name, server)}
		}
	}
	return nil
}

// rated reports whether a tool_rate_limits entry counts tool's calls.
func (p *policy) rated(tool string) bool {
	for _, tr := range p.ToolRates {
		if glob.Match(tr.Tool, tool) {
			return true
		}
	}
	return false
}

// governs reports whether the view has rules for kind: a request that
// names nothing readable is refused only where a name would be checked.
func (v view) governs(kind TargetKind) bool {
	switch kind {
	case TargetTool:
		return v.narrowed || v.p != nil && (v.p.Tools.set() || v.p.pins != nil || len(v.p.ToolRates) > 0)
	case TargetPrompt:
		return v.p != nil && v.p.Prompts.set()
	case TargetResource:
		return v.p != nil && v.p.Resources.set()
	}
	return false
}

// filtersLists reports whether list results need rewriting for v.
func (v view) filtersLists() bool { return v.narrowed || v.p != nil && v.p.lists }

// listKey is the member of a list result that holds the list, and the
// member of each entry that names it.
func listKey(k ListKind) (list, name string, kind TargetKind) {
	switch k {
	case ListTools:
		return "tools", "name", TargetTool
	case ListPrompts:
		return "prompts", "name", TargetPrompt
	case ListResources:
		return "resources", "uri", TargetResource
	case ListTemplates:
		return "resourceTemplates", "uriTemplate", TargetResource
	}
	return "", "", TargetNone
}

// filterList returns msg, one JSON-RPC message, with the entries of its
// result's list of kind k that the view does not allow left out (and, with
// pinning, tools whose definition changed). Everything else stays byte for
// byte: nextCursor, _meta, the kept entries. An entry whose name cannot be
// read unambiguously is left out too. k ListNone guesses the kind from the
// result's members (a resumed stream, whose request the agent did not see).
// A message that is not a response, or has no such list, is returned as it
// is.
func (v view) filterList(msg []byte, k ListKind) []byte {
	m, err := Peek(msg)
	if err != nil {
		// What the agent cannot read (a member twice, say) a client might
		// read its own way: it does not pass.
		return errorBody(nil, codeInternal, "mcpproxy: the server sent a message the agent's policy cannot read; withheld: "+err.Error(),
			map[string]string{"reason": reasonPolicyAmbiguous})
	}
	if m.Kind != KindResponse || msg[m.resultSpan.start] != '{' {
		return msg
	}
	kinds := []ListKind{k}
	if k == ListNone {
		kinds = []ListKind{ListTools, ListPrompts, ListResources, ListTemplates}
	}
	var edits []edit
	for _, k := range kinds {
		list, nameKey, kind := listKey(k)
		if kind == TargetTool && !v.filtersTools() || kind != TargetTool && !v.governs(kind) {
			continue
		}
		res, err := members(msg, m.resultSpan.start, []string{list})
		if err != nil {
			// An ambiguous result (a list member twice): the client might
			// read either copy; it gets an empty list rather than a guess.
			return v.unreadableResult(&m)
		}
		lv, ok := res.get(list)
		if !ok || msg[lv.start] != '[' {
			continue
		}
		els, err := elements(msg, lv.start)
		if err != nil {
			continue
		}
		kept := make([]byte, 0, lv.end-lv.start)
		kept = append(kept, '[')
		dropped := 0
		for _, el := range els {
			if !v.keepEntry(msg, el, nameKey, kind) {
				dropped++
				continue
			}
			if len(kept) > 1 {
				kept = append(kept, ',')
			}
			kept = append(kept, msg[el.start:el.end]...)
		}
		if dropped > 0 {
			edits = append(edits, edit{lv, append(kept, ']')})
		}
	}
	if v.p != nil && v.p.pins != nil {
		v.p.pins.flush()
	}
	if len(edits) == 0 {
		return msg
	}
	return rewrite(msg, edits...)
}

func (v view) filtersTools() bool {
	return v.narrowed || v.p != nil && (v.p.Tools.set() || v.p.pins != nil)
}

// keepEntry decides one entry of a list.
func (v view) keepEntry(msg []byte, el span, nameKey string, kind TargetKind) bool {
	if msg[el.start] != '{' {
		return false
	}
	name, err := stringMember(msg, el.start, nameKey)
	if err != nil || !v.allows(kind, name) {
		return false
	}
	if kind == TargetTool && v.p != nil && v.p.pins != nil {
		return v.p.pins.observe(v.p.server, name, msg[el.start:el.end])
	}
	return true
}

// unreadableResult replaces a list result it cannot read safely with an
// error.
func (v view) unreadableResult(m *Message) []byte {
	return errorBody(m.ID, codeInternal, "mcpproxy: the server's list result is ambiguous (a member appears twice); the agent's policy withheld it",
		map[string]string{"reason": reasonPolicyAmbiguous})
}

// listFilter rewrites the response to one list request of a stdio
// session.
type listFilter struct {
	v    view
	kind ListKind
}
