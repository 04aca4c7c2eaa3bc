package mcpproxy

import (
	"os"
	"slices"
	"strings"
)

// passEnv lists the agent's environment variables a child inherits; all
// others (the agent's credentials among them) stay with the agent.
var passEnv = []string{"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TMPDIR"}

// ChildEnv is the environment a stdio server with env extra runs with:
// for tools that start one as the agent would (check --probe).
func ChildEnv(extra map[string]string) []string { return childEnv(extra) }

func childEnv(extra map[string]string) []string {
	env := make(map[string]string)
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if slices.Contains(passEnv, k) || strings.HasPrefix(k, "LC_") {
			env[k] = v
		}
	}
	for k, v := range extra {
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}
