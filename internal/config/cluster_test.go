package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const clusterSecret = "0123456789abcdef0123456789abcdef0123456789abcdef"

// The cluster section: absent, nothing of it is set; present, it is
// checked whole and the secret read.
func TestLoadRelayCluster(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "cluster.secret", clusterSecret+"\n")
	p := writeFile(t, dir, "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+
		`cluster: {name: r1, nats_url: "nats://nats:4222", listen: "0.0.0.0:7444", advertise: "10.0.0.5:7444", secret_file: cluster.secret}`+"\n")
	c, err := LoadRelay(p)
	require.NoError(t, err)
	require.True(t, c.Cluster.Enabled())
	require.Equal(t, []byte(clusterSecret), c.Cluster.Secret)
	require.Equal(t, filepath.Join(dir, "cluster.secret"), c.Cluster.SecretFile)
	require.Equal(t, "10.0.0.5:7444", c.Cluster.Advertise)

	p = writeFile(t, dir, "plain.yaml", strings.ReplaceAll(validRelay, "HASH", hashA))
	c, err = LoadRelay(p)
	require.NoError(t, err)
	require.False(t, c.Cluster.Enabled())

	// advertise defaults to a listen address with a host
	p = writeFile(t, dir, "default.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+
		`cluster: {nats_url: "nats://nats:4222", listen: "10.0.0.6:7444", secret_file: cluster.secret}`+"\n")
	c, err = LoadRelay(p)
	require.NoError(t, err)
	require.Equal(t, "10.0.0.6:7444", c.Cluster.Advertise)
	require.NotEmpty(t, c.Cluster.Name, "the host name by default")
}

func TestRelayClusterErrors(t *testing.T) {
	full := `cluster: {nats_url: "nats://nats:4222", listen: "0.0.0.0:7444", advertise: "10.0.0.5:7444", secret_file: cluster.secret}`
	for _, tt := range []struct {
		name, cluster, secret, key, reason string
	}{
		{"no nats url", strings.Replace(full, `nats_url: "nats://nats:4222", `, "", 1), clusterSecret, "cluster.nats_url", "required with a cluster section"},
		{"http url", strings.Replace(full, "nats://nats:4222", "http://nats:4222", 1), clusterSecret, "cluster.nats_url", "not a NATS URL"},
		{"no listen", strings.Replace(full, `listen: "0.0.0.0:7444", `, "", 1), clusterSecret, "cluster.listen", "required"},
		{"no advertise for 0.0.0.0", strings.Replace(full, `advertise: "10.0.0.5:7444", `, "", 1), clusterSecret, "cluster.advertise", "names no host"},
		{"advertise port 0", strings.Replace(full, "10.0.0.5:7444", "10.0.0.5:0", 1), clusterSecret, "cluster.advertise", "cannot be dialed"},
		{"no secret file", strings.Replace(full, `, secret_file: cluster.secret`, "", 1), clusterSecret, "cluster.secret_file", "required with a cluster section"},
		{"short secret", full, "s3cr3", "cluster.secret_file", "secret of 5 bytes is too short: at least 32"},
		{"empty secret", full, "", "cluster.secret_file", "is empty"},
		{"bad name", strings.Replace(full, "cluster: {", "cluster: {name: ../r1, ", 1), clusterSecret, "cluster.name", "invalid name"},
		{"unknown key", strings.Replace(full, "cluster: {", "cluster: {nats: x, ", 1), clusterSecret, "", "nats"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "cluster.secret", tt.secret)
			p := writeFile(t, dir, "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+tt.cluster+"\n")
			_, err := LoadRelay(p)
			require.Error(t, err)
			var ce *Error
			require.True(t, errors.As(err, &ce), "error %v is not a *config.Error", err)
			require.Contains(t, err.Error(), p)
			if tt.key != "" {
				require.Contains(t, err.Error(), tt.key+":")
			}
			require.Contains(t, err.Error(), tt.reason)
			if len(tt.secret) > 4 {
				require.NotContains(t, err.Error(), tt.secret, "secrets never appear in errors")
			}
		})
	}
}

// In a Kubernetes pod the advertised address comes from the environment
// (the pod IP), the rest from the file.
func TestRelayClusterAdvertiseFromEnv(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "cluster.secret", clusterSecret)
	t.Setenv("MCPTUN_CLUSTER_ADVERTISE", "10.9.9.9:7444")
	p := writeFile(t, dir, "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+
		`cluster: {nats_url: "nats://nats:4222", listen: "0.0.0.0:7444", secret_file: cluster.secret}`+"\n")
	c, err := LoadRelay(p)
	require.NoError(t, err)
	require.Equal(t, "10.9.9.9:7444", c.Cluster.Advertise)
}
