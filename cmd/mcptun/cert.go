package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/pki"
)

func newCertCmd() *cobra.Command {
	var (
		dir, keyType string
		names        []string
		days         int
		force        bool
	)
	cmd := &cobra.Command{
		Use:   "cert --name HOST [--name HOST...]",
		Short: "Make a CA and a relay certificate for the names agents and clients dial; print its pin_sha256",
		Long: `cert writes into --dir:
  ca.crt, ca.key      a CA of your own (made once; reused when present, so
                      agents trusting it need no change when relay.crt is renewed)
  relay.crt, relay.key the relay's certificate for every --name (DNS name or IP)

Point relay.yaml's tunnel.cert_file/key_file (and http.cert_file/key_file
for HTTPS) at relay.crt/relay.key, and the agents at the CA (relay.ca_file:
ca.crt) or at the printed pin (relay.pin_sha256). Keys are written mode 0600.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(names) == 0 {
				return fmt.Errorf("cert: give the names agents and clients dial, e.g. --name relay.example.com --name 10.0.0.5")
			}
			if days <= 0 {
				return fmt.Errorf("cert: --days must be > 0, not %d", days)
			}
			r, err := pki.Make(pki.Options{Dir: dir, Names: names, KeyType: strings.ToLower(keyType),
				Validity: time.Duration(days) * 24 * time.Hour, Overwrite: force})
			if err != nil {
				return fmt.Errorf("cert: %w", err)
			}
			out := cmd.OutOrStdout()
			if r.CAReused {
				fmt.Fprintf(out, "CA:          %s (existing, reused)\n", r.CACert)
			} else {
				fmt.Fprintf(out, "CA:          %s, %s (new; keep ca.key offline if you can)\n", r.CACert, r.CAKey)
			}
			fmt.Fprintf(out, "certificate: %s, %s for %s, valid until %s\n", r.Cert, r.Key,
				strings.Join(names, ", "), r.Leaf.NotAfter.UTC().Format(time.DateOnly))
			fmt.Fprintf(out, "pin_sha256:  %s\n", r.Pin)
			fmt.Fprintf(out, "\nagent.yaml, either:\n  relay: {ca_file: %s}\nor:\n  relay: {pin_sha256: %q}\n", r.CACert, r.Pin)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".", "directory to write ca.crt, ca.key, relay.crt, relay.key into")
	cmd.Flags().StringArrayVar(&names, "name", nil, "a DNS name or IP address the relay is reached at (repeat for more)")
	cmd.Flags().StringVar(&keyType, "key-type", pki.KeyECDSA, "ecdsa (P-256) or ed25519")
	cmd.Flags().IntVar(&days, "days", int(pki.DefaultCertValidity/(24*time.Hour)), "validity of the relay certificate in days")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing relay.crt/relay.key")
	return cmd
}
