package mcpproxy

import (
	"errors"
	"fmt"
)

// Target is what an MCP request acts on, as the agent's policy sees it:
// the method, and the tool, prompt or resource it names (a list method
// names none but says what its result lists). It is derived from the body
// the server will act on, never from headers. The audit trail can use it
// for its method and name fields.
type Target struct {
	Method string
	// Kind says what Name is; TargetNone for methods that name nothing.
	Kind TargetKind
	// Name is params.name of tools/call and prompts/get, params.uri of
	// resources/read, resources/subscribe and resources/unsubscribe, and
	// params.ref's name or uri of completion/complete.
	Name string
	// List is what a list method's result lists (ListNone otherwise).
	List ListKind
}

// TargetKind says what a Target's Name names.
type TargetKind uint8

const (
	TargetNone TargetKind = iota
	TargetTool
	TargetPrompt
	TargetResource
)

func (k TargetKind) String() string {
	switch k {
	case TargetTool:
		return "tool"
	case TargetPrompt:
		return "prompt"
	case TargetResource:
		return "resource"
	}
	return "none"
}

// ListKind is the kind of list a list method's result carries.
type ListKind uint8

const (
	ListNone      ListKind = iota
	ListTools              // tools/list: result.tools[].name
	ListPrompts            // prompts/list: result.prompts[].name
	ListResources          // resources/list: result.resources[].uri
	ListTemplates          // resources/templates/list: result.resourceTemplates[].uriTemplate
)

// errNoName is a request that must name a tool, prompt or resource and
// does not (with a string): the policy cannot pass it.
var errNoName = errors.New("the request names no tool, prompt or resource as a string")

// TargetOf finds the target of m, a message Peek read from data. A
// member the target is read from must appear once and in lower case, as
// Peek demands of the members it reads; for a method that must name
// something, a missing or non-string name is an error.
func TargetOf(data []byte, m *Message) (Target, error) {
	t := Target{Method: m.Method}
	var key string
	switch m.Method {
	case "tools/list":
		t.List = ListTools
		return t, nil
	case "prompts/list":
		t.List = ListPrompts
		return t, nil
	case "resources/list":
		t.List = ListResources
		return t, nil
	case "resources/templates/list":
		t.List = ListTemplates
		return t, nil
	case "tools/call":
		t.Kind, key = TargetTool, "name"
	case "prompts/get":
		t.Kind, key = TargetPrompt, "name"
	case "resources/read", "resources/subscribe", "resources/unsubscribe":
		t.Kind, key = TargetResource, "uri"
	case "completion/complete":
		return completionTarget(data, m, t)
	default:
		return t, nil
	}
	if m.paramsSpan.end == 0 || data[m.paramsSpan.start] != '{' {
		return t, errNoName
	}
	name, err := stringMember(data, m.paramsSpan.start, key)
	if err != nil {
		return t, err
	}
	t.Name = name
	return t, nil
}

// completionTarget reads params.ref of completion/complete: a prompt's
// name (ref/prompt) or a resource template's URI (ref/resource), whose
// argument completions are as much the prompt's or resource's as its
// content.
func completionTarget(data []byte, m *Message, t Target) (Target, error) {
	if m.paramsSpan.end == 0 || data[m.paramsSpan.start] != '{' {
		return t, errNoName
	}
	ps, err := members(data, m.paramsSpan.start, []string{"ref"})
	if err != nil {
		return t, err
	}
	rv, ok := ps.get("ref")
	if !ok || data[rv.start] != '{' {
		return t, errNoName
	}
	typ, err := stringMember(data, rv.start, "type")
	if err != nil {
		return t, err
	}
	switch typ {
	case "ref/prompt":
		t.Kind = TargetPrompt
		t.Name, err = stringMember(data, rv.start, "name")
	case "ref/resource":
		t.Kind = TargetResource
		t.Name, err = stringMember(data, rv.start, "uri")
	default:
		return t, fmt.Errorf("completion/complete: unknown ref type %q", typ)
	}
	return t, err
}

// stringMember returns the string value of member key of the object at
// data[start].
func stringMember(data []byte, start int, key string) (string, error) {
	ms, err := members(data, start, []string{key})
	if err != nil {
		return "", err
	}
	v, ok := ms.get(key)
	if !ok || data[v.start] != '"' {
		return "", fmt.Errorf("%w (%s)", errNoName, key)
	}
	return decodeString(data[v.start:v.end])
}

// elements returns the spans of the values of the JSON array at
// data[start] (data validated as JSON).
func elements(data []byte, start int) ([]span, error) {
	var out []span
	i := skipWS(data, start+1)
	if i < len(data) && data[i] == ']' {
		return out, nil
	}
	for {
		vs := i
		ve, err := skipValue(data, vs)
		if err != nil {
			return nil, err
		}
		out = append(out, span{vs, ve})
		i = skipWS(data, ve)
		if i >= len(data) {
			return nil, errors.New("truncated array")
		}
		switch data[i] {
		case ',':
			i = skipWS(data, i+1)
		case ']':
			return out, nil
		default:
			return nil, fmt.Errorf("unexpected %q in array", data[i])
		}
	}
}
