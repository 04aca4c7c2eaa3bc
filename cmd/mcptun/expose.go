package main

import (
	"context"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/config"
)

// exposeFlags are mcptun agent's quick expose flags: an agent without a
// configuration file.
type exposeFlags struct {
	relays                   []string
	name, tokenFile, pin, ca string
	server, transport        string
	urls                     []string
}

func (f *exposeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringArrayVar(&f.relays, "relay", nil, "quick expose: the relay's tunnel address HOST:PORT (repeat for several relays)")
	fl.StringVar(&f.name, "name", "", "quick expose: the agent's name, as listed in relay.yaml's agents")
	fl.StringVar(&f.tokenFile, "token-file", "", "quick expose: file holding the agent's token (or set MCPTUN_RELAY_TOKEN)")
	fl.StringVar(&f.pin, "pin", "", "quick expose: the relay certificate's pin_sha256 (printed by mcptun cert)")
	fl.StringVar(&f.ca, "ca-file", "", "quick expose: CA file that verifies the relay (instead of --pin)")
	fl.StringVar(&f.server, "server", "", "quick expose: the name of the server given after -- (default: derived from the command)")
	fl.StringArrayVar(&f.urls, "url", nil, "quick expose: an HTTP MCP server to offer, NAME=URL (repeatable)")
	fl.StringVar(&f.transport, "transport", "auto", "quick expose: auto, quic or tcp")
}

// used reports whether any quick expose flag or a command was given.
func (f *exposeFlags) used(cmd *cobra.Command, args []string) bool {
	if len(args) > 0 {
		return true
	}
	for _, n := range []string{"relay", "name", "token-file", "pin", "ca-file", "server", "url", "transport"} {
		if cmd.Flags().Changed(n) {
			return true
		}
	}
	return false
}

// config builds and validates the agent configuration the flags describe.
func (f *exposeFlags) config(command []string) (*config.Agent, error) {
	c := &config.Agent{
		Name: f.name,
		Relay: config.AgentRelay{Address: f.relays, TokenFile: f.tokenFile, CAFile: f.ca, PinSHA256: f.pin,
			Transport: f.transport},
	}
	if len(command) > 0 {
		name := f.server
		if name == "" {
			name = deriveServerName(command)
		}
		c.Servers = append(c.Servers, config.AgentServer{Name: name, Command: command})
	} else if f.server != "" {
		return nil, fmt.Errorf("agent: --server names the command given after --; there is none")
	}
	for _, u := range f.urls {
		name, raw, ok := strings.Cut(u, "=")
		if !ok || name == "" || raw == "" {
			return nil, fmt.Errorf("agent: --url %q: want NAME=URL, e.g. --url wiki=http://10.0.0.7:9000/mcp", u)
		}
		c.Servers = append(c.Servers, config.AgentServer{Name: name, URL: raw})
	}
	if len(c.Relay.Address) == 0 {
		return nil, fmt.Errorf("agent: quick expose needs --relay HOST:PORT (the relay's tunnel address), --name and --token-file; or use --config agent.yaml")
	}
	if err := config.ValidateAgent(c, "(command line)"); err != nil {
		return nil, flagNames(err)
	}
	return c, nil
}

// flagNames rewrites config keys in a validation error as the flags that
// set them, so a quick expose error names what the operator typed.
func flagNames(err error) error {
	r := strings.NewReplacer(
		": relay.token_file:", ": --token-file:",
		": relay.address:", ": --relay:",
		": relay.pin_sha256:", ": --pin:",
		": relay.ca_file:", ": --ca-file:",
		": relay.transport:", ": --transport:",
		": name:", ": --name:",
		": servers:", ": a server (a command after --, or --url NAME=URL):",
	)
	return fmt.Errorf("%s", r.Replace(err.Error()))
}

// printClientURLs waits until a tunnel is up, then prints the URL clients
// reach each server at.
func printClientURLs(ctx context.Context, w io.Writer, ra *runningAgent, cfg *config.Agent) {
	if err := ra.Relays.WaitConnected(ctx, 1); err != nil {
		return
	}
	bases := ra.Relays.ClientURLs()
	if len(bases) == 0 {
		bases = []string{"http(s)://<the relay's http.listen>"}
	}
	for _, s := range cfg.Servers {
		for _, b := range bases {
			fmt.Fprintf(w, "client URL: %s/%s/%s/mcp\n", b, cfg.Name, s.Name)
		}
	}
}

var nonName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// runners are programs whose first argument that is not a flag names the
// server they run (npx -y @modelcontextprotocol/server-memory).
var runners = map[string]bool{"npx": true, "bunx": true, "uvx": true, "pnpx": true, "node": true, "deno": true,
	"python": true, "python3": true, "uv": true, "pipx": true, "docker": true, "podman": true}

// deriveServerName names the server a command runs: memory for
// npx -y @modelcontextprotocol/server-memory, git for uvx mcp-server-git,
// the program's name otherwise.
func deriveServerName(command []string) string {
	name := path.Base(command[0])
	if runners[strings.TrimSuffix(name, ".exe")] {
		for i := 1; i < len(command); i++ {
			a := command[i]
			if a == "-m" && i+1 < len(command) { // python -m module
				name = command[i+1]
				break
			}
			if strings.HasPrefix(a, "-") || a == "run" || a == "exec" || a == "tool" {
				continue
			}
			name = a
			break
		}
	}
	// node .../server-everything/dist/index.js: the package, not index.
	for generic := map[string]bool{"index": true, "main": true, "server": true, "cli": true, "dist": true, "build": true, "lib": true, "src": true, "bin": true}; ; {
		base := strings.TrimSuffix(path.Base(name), path.Ext(path.Base(name)))
		if !generic[base] || path.Dir(name) == "." || path.Dir(name) == "/" {
			break
		}
		name = path.Dir(name)
	}
	name = path.Base(name)
	if i := strings.LastIndex(name, "@"); i > 0 { // a version: server-memory@1.2
		name = name[:i]
	}
	name = strings.TrimSuffix(name, path.Ext(name))
	if name == "" {
		name = path.Base(command[0])
	}
	for _, p := range []string{"mcp-server-", "server-", "mcp-"} {
		if s := strings.TrimPrefix(name, p); s != name && s != "" {
			name = s
			break
		}
	}
	for _, s := range []string{"-mcp-server", "-mcp", "-server"} {
		if t := strings.TrimSuffix(name, s); t != name && t != "" {
			name = t
			break
		}
	}
	name = strings.Trim(nonName.ReplaceAllString(name, "-"), "-._")
	if name == "" {
		return "mcp"
	}
	if len(name) > 63 {
		name = name[:63]
	}
	return name
}
