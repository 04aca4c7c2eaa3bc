package packaging

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/mcptun/mcptun/internal/config"
)

const root = "../.."

// dockerfileProblems lists what is wrong with a Dockerfile for mcptun: a
// multi-stage build whose builder makes a static binary (CGO_ENABLED=0)
// with the Go of go.mod, copied into distroless/static or scratch, run as
// a non-root user, with an exec-form entrypoint and the tunnel port on UDP
// and TCP.
func dockerfileProblems(dockerfile, goVersion string) []string {
	text := strings.ReplaceAll(dockerfile, "\\\n", " ")
	type stage struct {
		from, name string
		lines      []string
	}
	var stages []*stage
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if strings.EqualFold(f[0], "FROM") {
			s := &stage{from: f[1]}
			if len(f) >= 4 && strings.EqualFold(f[2], "AS") {
				s.name = f[3]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if !strings.EqualFold(f[0], "ARG") {
				return []string{"an instruction before the first FROM: " + line}
			}
			continue
		}
		stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, line)
	}
	var problems []string
	if len(stages) < 2 {
		return []string{fmt.Sprintf("not a multi-stage build (%d FROM)", len(stages))}
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.from, "golang:") {
		problems = append(problems, "the first stage is not a golang image: "+build.from)
	} else if v := strings.TrimPrefix(build.from, "golang:"); !strings.HasPrefix(v, goVersion) {
		problems = append(problems, fmt.Sprintf("the builder is golang:%s, go.mod wants go %s", v, goVersion))
	}
	hasRun := func(s *stage, all ...string) bool {
		for _, l := range s.lines {
			if !strings.HasPrefix(strings.ToUpper(l), "RUN ") {
				continue
			}
			ok := true
			for _, want := range all {
				ok = ok && strings.Contains(l, want)
			}
			if ok {
				return true
			}
		}
		return false
	}
	if !hasRun(build, "CGO_ENABLED=0", "go build", "-trimpath", "./cmd/mcptun", "-X main.version=") {
		problems = append(problems, "no RUN CGO_ENABLED=0 go build -trimpath -ldflags '-X main.version=...' ./cmd/mcptun in the builder: the binary would not be static or versioned")
	}
	if final.from != "scratch" && !strings.HasPrefix(final.from, "gcr.io/distroless/static") {
		problems = append(problems, "the final image is not scratch or distroless/static: "+final.from)
	}
	var user, entry string
	copied, udp, tcp := false, false, false
	for _, l := range final.lines {
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "USER":
			user = f[1]
		case "ENTRYPOINT":
			entry = strings.TrimSpace(l[len(f[0]):])
		case "COPY":
			if build.name != "" && slices.Contains(f, "--from="+build.name) {
				copied = true
			}
		case "EXPOSE":
			udp = udp || slices.Contains(f, "7443/udp")
			tcp = tcp || slices.Contains(f, "7443/tcp")
		case "RUN":
			problems = append(problems, "a RUN in the final stage (it has no shell): "+l)
		}
	}
	if uid := strings.Split(user, ":")[0]; user == "" || uid == "root" || uid == "0" {
		problems = append(problems, fmt.Sprintf("the final stage runs as root (USER %q)", user))
	}
	if !copied {
		problems = append(problems, "the final stage does not COPY --from the builder")
	}
	if !strings.HasPrefix(entry, "[") {
		problems = append(problems, "ENTRYPOINT is not in exec form (signals would go to a shell): "+entry)
	}
	if !udp || !tcp {
		problems = append(problems, "EXPOSE lacks 7443/udp or 7443/tcp (QUIC and TLS share the tunnel port)")
	}
	return problems
}

func goModVersion(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(b)
	require.NotNil(t, m)
	return string(m[1])
}

// TestDockerfile: the repository's Dockerfile has the essentials (no Docker
// engine runs here to build it), and each break of one is noticed.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	require.NoError(t, err)
	good := string(b)
	gov := goModVersion(t)
	require.Empty(t, dockerfileProblems(good, gov))

	for _, tc := range []struct{ name, old, new, want string }{
		{"single stage", "FROM gcr.io/distroless/static-debian12:nonroot\nCOPY --from=build /out/mcptun /usr/local/bin/mcptun\n", "", "not a multi-stage"},
		{"root", "USER 65532:65532", "USER root", "runs as root"},
		{"no user", "USER 65532:65532\n", "", "runs as root"},
		{"cgo", "CGO_ENABLED=0 ", "", "would not be static"},
		{"fat base", "gcr.io/distroless/static-debian12:nonroot", "debian:12", "not scratch or distroless"},
		{"old go", "golang:" + gov, "golang:1.20", "go.mod wants"},
		{"shell entrypoint", `ENTRYPOINT ["/usr/local/bin/mcptun"]`, "ENTRYPOINT /usr/local/bin/mcptun", "exec form"},
		{"no udp", "EXPOSE 7443/udp ", "EXPOSE ", "7443/udp"},
	} {
		require.Contains(t, good, tc.old, tc.name)
		bad := strings.Replace(good, tc.old, tc.new, 1)
		require.Contains(t, strings.Join(dockerfileProblems(bad, gov), "\n"), tc.want, tc.name)
	}

	ign, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	require.NoError(t, err)
	for _, want := range []string{".git", ".tools", "bin"} {
		require.Contains(t, strings.Fields(string(ign)), want, ".dockerignore")
	}
}

// keyExists reports whether key, or a key under it, is one the loader
// knows for role.
func keyExists(role, key string) bool {
	keys := config.RelayKeys()
	if role == "agent" {
		keys = config.AgentKeys()
	}
	for _, k := range keys {
		if k.Path == key || strings.HasPrefix(k.Path, key+".") || strings.HasPrefix(k.Path, key+"[]") {
			return true
		}
	}
	return false
}

// loadEmbedded validates a relay.yaml or agent.yaml embedded in a manifest
// with the real loader: every *_file it names is made in a temporary
// directory (a token file holds token), the rest is as written.
func loadEmbedded(t *testing.T, role, text, token string) {
	t.Helper()
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(text), &doc))
	dir := t.TempDir()
	var fix func(v any)
	fix = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, sub := range v {
				if s, ok := sub.(string); ok && strings.HasSuffix(k, "_file") {
					p := filepath.Join(dir, strings.ReplaceAll(strings.Trim(s, "/"), "/", "_"))
					// Long enough for every kind of secret (cluster
					// secrets need 32 bytes).
					content := strings.Repeat("0123456789abcdef", 4) + "\n"
					if k == "token_file" && token != "" {
						content = token + "\n"
					}
					require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
					v[k] = p
					continue
				}
				fix(sub)
			}
		case []any:
			for _, it := range v {
				fix(it)
			}
		}
	}
	fix(doc)
	out, err := yaml.Marshal(doc)
	require.NoError(t, err)
	p := filepath.Join(dir, role+".yaml")
	require.NoError(t, os.WriteFile(p, out, 0o600))
	if role == "relay" {
		_, err = config.LoadRelay(p)
	} else {
		_, err = config.LoadAgent(p)
	}
	require.NoError(t, err, "%s.yaml as embedded:\n%s", role, text)
}

// yamlDocs parses every document of a multi-document YAML file.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, path)
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs
}

// get walks a parsed YAML document: get(d, "spec", "template", 0, ...).
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

// TestKubernetesManifests: the manifests parse, the relay's embedded
// relay.yaml loads, readiness is /readyz on the admin port relay.yaml
// listens on, the Service carries the tunnel port on UDP and TCP, a PDB
// covers the relays, NATS is there at the address relay.yaml names, and
// the pod outlives the relay's shutdown_grace.
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(root, "examples", "kubernetes", "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	byKind := map[string]map[string]any{}
	for _, f := range files {
		for _, d := range yamlDocs(t, f) {
			kind, _ := d["kind"].(string)
			name, _ := get(d, "metadata", "name").(string)
			require.NotEmpty(t, kind, f)
			require.NotEmpty(t, name, f)
			byKind[kind+"/"+name] = d
		}
	}
	cm := byKind["ConfigMap/mcptun-relay"]
	require.NotNil(t, cm)
	relayYAML, _ := get(cm, "data", "relay.yaml").(string)
	require.NotEmpty(t, relayYAML)
	// cluster.advertise comes from the pod's environment (its IP), as the
	// Deployment sets it.
	require.Contains(t, fmt.Sprint(get(byKind["Deployment/mcptun-relay"], "spec", "template", "spec", "containers", 0, "env")),
		"MCPTUN_CLUSTER_ADVERTISE", "the relay Deployment must set cluster.advertise from the pod IP")
	t.Setenv("MCPTUN_CLUSTER_ADVERTISE", "10.0.0.5:7444")
	loadEmbedded(t, "relay", relayYAML, "")
	var relayDoc map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(relayYAML), &relayDoc))

	dep := byKind["Deployment/mcptun-relay"]
	require.NotNil(t, dep)
	pod := get(dep, "spec", "template", "spec")
	c := get(pod, "containers", 0)
	require.Equal(t, "/readyz", get(c, "readinessProbe", "httpGet", "path"))
	port := get(c, "readinessProbe", "httpGet", "port")
	var adminPort int
	for _, p := range get(c, "ports").([]any) {
		if get(p, "name") == port {
			adminPort = get(p, "containerPort").(int)
		}
	}
	require.NotZero(t, adminPort, "readinessProbe port %v is not a container port", port)
	require.True(t, strings.HasSuffix(get(relayDoc, "admin", "listen").(string), fmt.Sprintf(":%d", adminPort)),
		"relay.yaml admin.listen %v is not the probe's port %d", get(relayDoc, "admin", "listen"), adminPort)
	grace := get(pod, "terminationGracePeriodSeconds").(int)
	require.Greater(t, grace, 30, "terminationGracePeriodSeconds must exceed shutdown_grace (30s)")
	require.Equal(t, "30s", get(relayDoc, "shutdown_grace"))
	require.Equal(t, true, get(pod, "securityContext", "runAsNonRoot"))
	for _, e := range get(c, "env").([]any) {
		name := get(e, "name").(string)
		if !strings.HasPrefix(name, "MCPTUN_") {
			continue
		}
		key := strings.ToLower(strings.Replace(strings.TrimPrefix(name, "MCPTUN_"), "_", ".", 1))
		require.True(t, keyExists("relay", key), "env %s: no key %s", name, key)
	}

	svc := byKind["Service/mcptun-relay"]
	require.NotNil(t, svc)
	protos := map[string]bool{}
	for _, p := range get(svc, "spec", "ports").([]any) {
		protos[fmt.Sprintf("%v/%v", get(p, "port"), get(p, "protocol"))] = true
	}
	require.True(t, protos["7443/UDP"] && protos["7443/TCP"] && protos["8443/TCP"], "Service ports: %v", protos)
	require.Equal(t, get(dep, "spec", "selector", "matchLabels"), get(svc, "spec", "selector"))

	pdb := byKind["PodDisruptionBudget/mcptun-relay"]
	require.NotNil(t, pdb)
	require.Equal(t, get(dep, "spec", "selector", "matchLabels"), get(pdb, "spec", "selector", "matchLabels"))
	require.Less(t, get(pdb, "spec", "minAvailable").(int), get(dep, "spec", "replicas").(int))

	require.NotNil(t, byKind["Deployment/mcptun-nats"])
	nats := byKind["Service/mcptun-nats"]
	require.NotNil(t, nats)
	require.Equal(t, fmt.Sprintf("nats://%s:%v", get(nats, "metadata", "name"), get(nats, "spec", "ports", 0, "port")),
		get(relayDoc, "cluster", "nats_url"))
}

// TestComposeFile: the compose file parses, its relay.yaml and agent.yaml
// load, each agent replica's token is listed for it in relay.yaml, and the
// agents dial the three relays.
func TestComposeFile(t *testing.T) {
	docs := yamlDocs(t, filepath.Join(root, "examples", "compose", "compose.yaml"))
	require.Len(t, docs, 1)
	d := docs[0]
	for _, s := range []string{"nats", "relay1", "relay2", "relay3", "agent-a", "agent-b", "certs"} {
		require.NotNil(t, get(d, "services", s), "service %s", s)
	}
	relayYAML := get(d, "configs", "relay_yaml", "content").(string)
	agentYAML := get(d, "configs", "agent_yaml", "content").(string)
	// Each relay service names the address the others dial it at.
	for _, s := range []string{"relay1", "relay2", "relay3"} {
		require.Equal(t, s+":7444", get(d, "services", s, "environment", "MCPTUN_CLUSTER_ADVERTISE"), "service %s", s)
	}
	t.Setenv("MCPTUN_CLUSTER_ADVERTISE", "relay1:7444")
	loadEmbedded(t, "relay", relayYAML, "")
	var relayDoc, agentDoc map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(relayYAML), &relayDoc))
	require.NoError(t, yaml.Unmarshal([]byte(agentYAML), &agentDoc))
	var hashes []any
	for _, a := range get(relayDoc, "agents").([]any) {
		if get(a, "name") == get(agentDoc, "name") {
			hashes = get(a, "token_sha256").([]any)
		}
	}
	for _, svc := range []string{"agent-a", "agent-b"} {
		var src string
		for _, c := range get(d, "services", svc, "configs").([]any) {
			if get(c, "target") == "/etc/mcptun/agent.token" {
				src = get(c, "source").(string)
			}
		}
		require.NotEmpty(t, src, svc)
		token := get(d, "configs", src, "content").(string)
		sum := sha256.Sum256([]byte(token))
		require.Contains(t, hashes, hex.EncodeToString(sum[:]), "%s's token is not listed in relay.yaml", svc)
		loadEmbedded(t, "agent", agentYAML, token)
	}
	require.ElementsMatch(t, []any{"relay1:7443", "relay2:7443", "relay3:7443"}, get(agentDoc, "relay", "address"))
	require.Equal(t, "nats://nats:4222", get(relayDoc, "cluster", "nats_url"))
}
