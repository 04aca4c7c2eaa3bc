package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/mcpproxy"
	"github.com/spf13/cobra"
)

// serverPolicy is a server's policy from agent.yaml.
func serverPolicy(s config.AgentServer) mcpproxy.Policy {
	p := mcpproxy.Policy{
		Tools:     mcpproxy.Rules{Allow: s.Tools.Allow, Deny: s.Tools.Deny},
		Prompts:   mcpproxy.Rules{Allow: s.Prompts.Allow, Deny: s.Prompts.Deny},
		Resources: mcpproxy.Rules{Allow: s.Resources.Allow, Deny: s.Resources.Deny},
		Pin:       s.Pin,
	}
	for _, r := range s.ToolRateLimits {
		p.ToolRates = append(p.ToolRates, mcpproxy.ToolRate{Tool: r.Tool, Rate: r.RequestsPerSecond, Burst: r.Burst})
	}
	return p
}

// newToolsCmd is `mcptun tools`: the operator's side of tool pinning.
func newToolsCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "tools",
		Short: "Approve changed tool definitions of servers with pin: true",
	}
	cmd.PersistentFlags().StringVarP(&path, "config", "c", "agent.yaml", "agent configuration file (its pin_file is used)")
	pinFile := func() (string, error) {
		cfg, err := config.LoadAgent(path)
		if err != nil {
			return "", err
		}
		if cfg.PinFile == "" {
			return "", fmt.Errorf("%s: no server has pin: true and pin_file is not set", path)
		}
		return cfg.PinFile, nil
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "approve SERVER TOOL",
		Short: "Accept a pinned tool's changed definition; the running agent lets it through at once",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := pinFile()
			if err != nil {
				return err
			}
			d, err := mcpproxy.ApprovePin(f, args[0], args[1])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "approved tool %q of server %q: sha256 %s (changed: %s)\n",
				args[1], args[0], d.SHA256, strings.Join(d.Changed, ", "))
			return err
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "list-pins",
		Short: "List pinned tools and the changes waiting for approval",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := pinFile()
			if err != nil {
				return err
			}
			pins, err := mcpproxy.ListPins(f)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVER\tTOOL\tSHA256\tPINNED\tPENDING")
			for _, p := range pins {
				pending := "-"
				if p.Pending != nil {
					pending = fmt.Sprintf("changed %s at %s: mcptun tools approve %s %s",
						strings.Join(p.Pending.Changed, ","), p.Pending.SeenAt.Format(time.RFC3339), p.Server, p.Tool)
				}
				fmt.Fprintf(tw, "%s\t%s\t%.12s\t%s\t%s\n", p.Server, p.Tool, p.SHA256, p.PinnedAt.Format(time.RFC3339), pending)
			}
			return tw.Flush()
		},
	})
	return cmd
}
