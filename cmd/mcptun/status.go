package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/admin"
)

func newStatusCmd() *cobra.Command {
	var adminURL, tokenFile string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what a running relay or agent is doing (from its admin listener)",
		Long: "status asks a relay's or agent's admin listener (admin.listen) for /api/status and prints it:\n" +
			"agents online, servers with their request counts and rates, tunnels, the last errors.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			token := ""
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("status: --token-file: %w", err)
				}
				token = strings.TrimSpace(string(b))
			}
			body, err := fetchStatus(cmd.Context(), adminURL, token)
			if err != nil {
				return err
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(body)
				return err
			}
			var st admin.Status
			if err := json.Unmarshal(body, &st); err != nil {
				return fmt.Errorf("status: %s answered something that is not a status: %w", adminURL, err)
			}
			return printStatus(cmd.OutOrStdout(), &st)
		},
	}
	cmd.Flags().StringVar(&adminURL, "admin", "http://127.0.0.1:9090", "base URL of the admin listener")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the admin token (admin.token_file)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the JSON of /api/status")
	return cmd
}

func fetchStatus(ctx context.Context, base, token string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u := strings.TrimSuffix(base, "/") + "/api/status"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("status: --admin %q: %w", base, err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("status: cannot reach the admin listener (is admin.listen set, and is this its address?): %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("status: read %s: %w", u, err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, fmt.Errorf("status: %s wants the admin token: give --token-file (the file admin.token_file names)", u)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("status: %s answered %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

func printStatus(out io.Writer, st *admin.Status) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY: " + st.NotReady
	}
	name := st.Role
	if st.Name != "" {
		name += " " + st.Name
	}
	fmt.Fprintf(w, "%s (%s), up since %s: %s\n", name, st.Version, st.Started.Format(time.RFC3339), ready)
	ms := func(s float64) string {
		if s <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.1fms", s*1000)
	}
	if st.Role == "relay" {
		fmt.Fprintf(w, "\nAGENT\tREPLICAS\tVERSION\tTRANSPORT\tRTT\tCONNECTED SINCE\tSERVERS\n")
		if len(st.Agents) == 0 {
			fmt.Fprintf(w, "(no agent connected)\n")
		}
		for _, a := range st.Agents {
			n := a.Name
			if a.Draining {
				n += " (draining)"
			}
			v := strings.TrimPrefix(a.Version, "mcptun ")
			if v == "" {
				v = "-"
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", n, a.Replicas, v, a.Transport, ms(a.RTTSeconds),
				a.ConnectedAt.Format(time.RFC3339), strings.Join(a.Servers, ","))
		}
	}
	if st.Role == "agent" {
		fmt.Fprintf(w, "\nRELAY\tSTATE\tTRANSPORT\tRTT\tSINCE\tRECONNECTS\tFALLBACKS\n")
		for _, t := range st.Tunnels {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", t.Relay, t.State, t.Transport, ms(t.RTTSeconds),
				t.Since.Format(time.RFC3339), t.Reconnects, t.Fallbacks)
		}
	}
	fmt.Fprintf(w, "\nSERVER\tREQUESTS\tERRORS\tREQ/S\tSESSIONS\tCHILDREN\tLAST ERROR\n")
	for _, s := range st.Servers {
		n := s.Name
		if s.Agent != "" {
			n = s.Agent + "/" + s.Name
		}
		if s.Kind != "" {
			n += " (" + s.Kind + ")"
		}
		last := s.LastError
		if last == "" {
			last = s.Upstream
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%.2f\t%d\t%d\t%s\n", n, s.Requests, s.Errors, s.RatePerSecond, s.Sessions, s.Children, last)
	}
	if len(st.Errors) > 0 {
		fmt.Fprintf(w, "\nLAST ERRORS\tWHERE\tSTATUS\tREASON\n")
		for _, e := range st.Errors {
			where := strings.Trim(e.Agent+"/"+e.Server, "/")
			why := e.Reason
			if why == "" {
				why = e.Message
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", e.At.Format(time.RFC3339), where, e.Status, why)
		}
	}
	return w.Flush()
}
