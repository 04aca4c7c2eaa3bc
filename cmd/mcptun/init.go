package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/pki"
)

func newInitCmd() *cobra.Command {
	var (
		agentName, tunnelListen, httpListen, clientName string
		hosts                                           []string
		force                                           bool
	)
	cmd := &cobra.Command{
		Use:   "init [DIR]",
		Short: "Write a working relay.yaml, agent.yaml, secrets and certificates into DIR, and print the next commands",
		Long: `init writes into DIR (default: the current directory):
  relay.yaml          the relay: tunnel and HTTP listeners, the agent and one client (hashes only)
  agent.yaml          the agent: dials the relay, trusts ca.crt, offers the example "notes" server
  agent.token         the agent's credential (mode 0600)
  ca.crt, ca.key      a CA of your own; relay.crt, relay.key signed by it (see mcptun cert)
  notes/              the example server's data

The client's token is printed once and stored nowhere but as its hash in
relay.yaml. Replace the example server in agent.yaml with your own, then
run mcptun check --relay relay.yaml --agent agent.yaml --probe.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := "."
			if len(args) == 1 {
				dir = args[0]
			}
			return runInit(cmd, initOptions{dir: dir, agent: agentName, client: clientName, hosts: hosts,
				tunnelListen: tunnelListen, httpListen: httpListen, force: force})
		},
	}
	cmd.Flags().StringVar(&agentName, "agent-name", "dc1", "the agent's name (the first segment of client URLs)")
	cmd.Flags().StringVar(&clientName, "client-name", "me", "the MCP client's name in relay.yaml")
	cmd.Flags().StringArrayVar(&hosts, "host", nil, "a DNS name or IP the relay is reached at, for its certificate; the first is what the agent dials (default 127.0.0.1 and localhost)")
	cmd.Flags().StringVar(&tunnelListen, "tunnel-listen", "0.0.0.0:7443", "relay tunnel.listen (agents; UDP and TCP)")
	cmd.Flags().StringVar(&httpListen, "http-listen", "127.0.0.1:8080", "relay http.listen (MCP clients; plain HTTP: put a TLS proxy in front or set http.cert_file for other hosts)")
	cmd.Flags().BoolVar(&force, "force", false, "replace files that exist")
	return cmd
}

type initOptions struct {
	dir, agent, client, tunnelListen, httpListen string
	hosts                                        []string
	force                                        bool
}

func runInit(cmd *cobra.Command, o initOptions) error {
	if len(o.hosts) == 0 {
		o.hosts = []string{"127.0.0.1", "localhost"}
	}
	_, tunnelPort, err := net.SplitHostPort(o.tunnelListen)
	if err != nil {
		return fmt.Errorf("init: --tunnel-listen %q: %w", o.tunnelListen, err)
	}
	httpHost, httpPort, err := net.SplitHostPort(o.httpListen)
	if err != nil {
		return fmt.Errorf("init: --http-listen %q: %w", o.httpListen, err)
	}
	if tunnelPort == "0" || httpPort == "0" {
		return fmt.Errorf("init: give fixed ports: the agent and the clients must know them")
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	relayYAML, agentYAML := filepath.Join(dir, "relay.yaml"), filepath.Join(dir, "agent.yaml")
	if !o.force {
		for _, p := range []string{relayYAML, agentYAML, filepath.Join(dir, "agent.token"),
			filepath.Join(dir, pki.CertFile), filepath.Join(dir, pki.KeyFile)} {
			if _, err := os.Stat(p); err == nil {
				return fmt.Errorf("init: %s already exists; not replacing it (use --force to replace)", p)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	certs, err := pki.Make(pki.Options{Dir: dir, Names: o.hosts, Overwrite: o.force})
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	agentToken, clientToken := newToken(), newToken()
	if err := pki.WriteFile(filepath.Join(dir, "agent.token"), []byte(agentToken+"\n"), 0o600, o.force); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	notes := filepath.Join(dir, "notes")
	if err := os.MkdirAll(notes, 0o700); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("init: cannot find this binary for the example server: %w", err)
	}

	relay := fmt.Sprintf(`# mcptun relay configuration, written by mcptun init. All keys: mcptun relay --help.
tunnel:
  listen: %q          # agents dial in here: QUIC on UDP and TLS over TCP
  cert_file: relay.crt            # relative paths are relative to this file
  key_file: relay.key
http:
  listen: %q          # MCP clients: http://HOST:PORT/{agent}/{server}/mcp
  # For HTTPS set these (relay.crt is signed by ca.crt; or use your own):
  # cert_file: relay.crt
  # key_file: relay.key
agents:
  - name: %s
    token_sha256: %q   # SHA-256 of agent.token
clients:
  - name: %s
    token_sha256: %q   # SHA-256 of the token init printed once
    allow: ["%s/*"]
log: {level: info, format: text}
shutdown_grace: 30s
`, o.tunnelListen, o.httpListen, o.agent, tokenHash(agentToken), o.client, tokenHash(clientToken), o.agent)
	agent := fmt.Sprintf(`# mcptun agent configuration, written by mcptun init. All keys: mcptun agent --help.
name: %s
relay:
  address: %q
  token_file: agent.token         # mode 0600; or set MCPTUN_RELAY_TOKEN
  ca_file: ca.crt                 # or: pin_sha256: %q
  transport: auto                 # QUIC, TLS over TCP where UDP is blocked
servers:
  # The example notes server built into mcptun. Replace it with your own:
  #   - {name: memory, command: [npx, -y, "@modelcontextprotocol/server-memory"]}
  #   - {name: wiki, url: "http://10.0.0.7:9000/mcp"}
  - name: notes
    command: [%q, example-server, --notes-dir, %q]
log: {level: info, format: text}
shutdown_grace: 30s
`, o.agent, net.JoinHostPort(o.hosts[0], tunnelPort), certs.Pin, exe, notes)
	if err := pki.WriteFile(relayYAML, []byte(relay), 0o644, o.force); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := pki.WriteFile(agentYAML, []byte(agent), 0o644, o.force); err != nil {
		return fmt.Errorf("init: %w", err)
	}

	clientHost := httpHost
	if ip := net.ParseIP(httpHost); httpHost == "" || (ip != nil && ip.IsUnspecified()) {
		clientHost = o.hosts[0]
	}
	url := fmt.Sprintf("http://%s/%s/notes/mcp", net.JoinHostPort(clientHost, httpPort), o.agent)
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "wrote %s: relay.yaml agent.yaml agent.token ca.crt ca.key relay.crt relay.key notes/\n", dir)
	fmt.Fprintf(out, "relay pin_sha256: %s\n\n", certs.Pin)
	fmt.Fprintf(out, "client %q token (shown only now; relay.yaml keeps its hash):\n  %s\n\n", o.client, clientToken)
	fmt.Fprintf(out, "Check everything, starting each server and dialing the relay once it runs:\n  %s check --relay %s --agent %s --probe\n\n", exe, relayYAML, agentYAML)
	fmt.Fprintf(out, "Next:\n")
	fmt.Fprintf(out, "  1. start the relay:  %s relay --config %s\n", exe, relayYAML)
	fmt.Fprintf(out, "  2. start the agent:  %s agent --config %s\n", exe, agentYAML)
	fmt.Fprintf(out, "  3. point a client:   URL %s\n", url)
	fmt.Fprintf(out, "                       header Authorization: Bearer %s\n", clientToken)
	fmt.Fprintf(out, "     e.g. claude mcp add --transport http notes %s --header \"Authorization: Bearer %s\"\n", url, clientToken)
	if !strings.HasPrefix(o.hosts[0], "127.") && o.hosts[0] != "localhost" {
		fmt.Fprintf(out, "\nCopy agent.yaml, agent.token and ca.crt to the agent's host; keep ca.key somewhere safe.\n")
	}
	return nil
}
