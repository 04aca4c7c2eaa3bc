package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// TestKeysCoverExamples: every key written in examples/*.yaml is one
// RelayKeys or AgentKeys lists, so the --help generated from them names it.
func TestKeysCoverExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	known := map[string]map[string]bool{"relay": {}, "agent": {}}
	for _, k := range RelayKeys() {
		known["relay"][k.Path] = true
	}
	for _, k := range AgentKeys() {
		known["agent"][k.Path] = true
	}
	for _, f := range files {
		role := "agent"
		if strings.Contains(filepath.Base(f), "relay") {
			role = "relay"
		}
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		var doc any
		require.NoError(t, yaml.Unmarshal(b, &doc))
		for _, k := range yamlKeys(doc, "") {
			require.True(t, known[role][k], "%s: key %s is not in %sKeys(): the help would not list it", f, k, role)
		}
	}
	require.Contains(t, fmt.Sprint(AgentKeys()), "servers[].command")
	require.Contains(t, fmt.Sprint(RelayKeys()), "clients[].rate_limit.requests_per_second")
}

// yamlKeys lists the key paths of a parsed YAML document in Keys' form;
// maps under a map-typed key (env, headers) are that key's values.
func yamlKeys(v any, prefix string) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, sub := range v {
			key := prefix + k
			if k == "env" || k == "headers" {
				out = append(out, key)
				continue
			}
			switch sub.(type) {
			case map[string]any:
				out = append(out, yamlKeys(sub, key+".")...)
			case []any:
				items := sub.([]any)
				if len(items) > 0 {
					if _, ok := items[0].(map[string]any); ok {
						for _, it := range items {
							out = append(out, yamlKeys(it, key+"[].")...)
						}
						continue
					}
				}
				out = append(out, key)
			default:
				out = append(out, key)
			}
		}
	}
	return out
}
