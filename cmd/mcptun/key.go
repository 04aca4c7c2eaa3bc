package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/agentkey"
)

func newKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Make agent keys (an Ed25519 key instead of a token) and print what relay.yaml lists",
	}
	var out string
	newCmd := &cobra.Command{
		Use:   "new",
		Short: "Write a new Ed25519 private key for an agent (mode 0600) and print the public_keys line for relay.yaml",
		Long: `Write a new Ed25519 private key for an agent and print the line that lists
its public key in relay.yaml. The agent names the file in agent.yaml as
relay.key_file. The agent signs every TLS session it opens with the key, so
a relay learns nothing it could replay: not at another relay, not on
another connection. An existing file is never overwritten. With --out -
the key goes to standard output and the rest to standard error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := agentkey.Generate()
			if err != nil {
				return err
			}
			pemBytes, err := agentkey.MarshalPrivate(k)
			if err != nil {
				return err
			}
			info := cmd.OutOrStdout()
			if out == "-" {
				if _, err := cmd.OutOrStdout().Write(pemBytes); err != nil {
					return err
				}
				info = cmd.ErrOrStderr()
			} else if err := writeNewSecret(out, pemBytes); err != nil {
				return fmt.Errorf("key new: %w", err)
			}
			pub := k.Public().(ed25519.PublicKey)
			if out != "-" {
				fmt.Fprintf(info, "wrote %s (Ed25519 private key, mode 0600); in agent.yaml:\n  relay:\n    key_file: %s\n", out, out)
			}
			_, err = fmt.Fprintf(info, "in relay.yaml, under the agent's entry (one key per replica):\n%s\n", publicKeysLine(pub))
			return err
		},
	}
	newCmd.Flags().StringVarP(&out, "out", "o", "agent.key", "file to write the private key to (- for standard output)")
	cmd.AddCommand(newCmd)
	cmd.AddCommand(&cobra.Command{
		Use:   "show FILE",
		Short: "Print the relay.yaml line for an agent's key file (public_keys) or client certificate (cert_sha256)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("key show: %w", err)
			}
			return showKey(cmd.OutOrStdout(), args[0], b)
		},
	})
	return cmd
}

// publicKeysLine is the relay.yaml line listing pub.
func publicKeysLine(pub ed25519.PublicKey) string {
	return fmt.Sprintf("  public_keys: [%q]", agentkey.FormatPublic(pub))
}

// showKey prints the relay.yaml line for a PEM Ed25519 private key or a
// PEM certificate.
func showKey(w io.Writer, name string, b []byte) error {
	block, _ := pem.Decode(b)
	if block != nil && block.Type == "CERTIFICATE" {
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("key show: %s: %w", name, err)
		}
		spki, whole := sha256.Sum256(c.RawSubjectPublicKeyInfo), sha256.Sum256(c.Raw)
		_, err = fmt.Fprintf(w, "in relay.yaml, under the agent's entry (the hash of the certificate's public key, which survives renewal with the same key):\n  cert_sha256: [%q]\n(the whole certificate's SHA-256, %s, matches too, until it is renewed)\n",
			hex.EncodeToString(spki[:]), hex.EncodeToString(whole[:]))
		return err
	}
	k, err := agentkey.ParsePrivate(b)
	if err != nil {
		if errors.Is(err, agentkey.ErrNotEd25519) {
			return fmt.Errorf("key show: %s: %w; for a client certificate, show the certificate file instead", name, err)
		}
		return fmt.Errorf("key show: %s: %w", name, err)
	}
	_, err = fmt.Fprintf(w, "in relay.yaml, under the agent's entry:\n%s\n", publicKeysLine(k.Public().(ed25519.PublicKey)))
	return err
}

// writeNewSecret creates path with mode 0600 and writes b; it never
// replaces an existing file.
func writeNewSecret(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s exists; not overwriting a key (remove it first, or pick another --out)", path)
		}
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}
