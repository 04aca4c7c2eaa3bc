package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// newToken returns a random 256-bit secret, URL-safe.
func newToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return base64.RawURLEncoding.EncodeToString(b)
}

func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Make and hash secrets for agents and clients",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "new",
		Short: "Print a new random token and the token_sha256 line for relay.yaml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t := newToken()
			h := tokenHash(t)
			// The first two lines are for scripts; the rest says where
			// each goes.
			_, err := fmt.Fprintf(cmd.OutOrStdout(), `token:        %s
token_sha256: %s

The token is the secret: give it to the agent (in the file relay.token_file
names, mode 0600, or MCPTUN_RELAY_TOKEN) or to the MCP client (Authorization:
Bearer <token>). relay.yaml keeps only its hash, under the agent's or the
client's entry:
  token_sha256: %q
`, t, h, h)
			return err
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "hash",
		Short: "Read a token on stdin and print its token_sha256",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
			line = strings.TrimRight(line, "\r\n")
			if line == "" {
				return fmt.Errorf("token hash: no token on stdin (%v)", err)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tokenHash(line))
			return err
		},
	})
	return cmd
}
