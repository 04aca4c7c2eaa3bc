package config

import (
	"slices"
	"testing"
	"time"
)

func TestChangedKeys(t *testing.T) {
	base := func() *Relay {
		return &Relay{
			Tunnel:  RelayTunnel{Listen: "127.0.0.1:7000", CertFile: "a.crt"},
			HTTP:    RelayHTTP{Listen: "127.0.0.1:8080", HeaderTimeout: time.Second},
			Agents:  []RelayAgent{{Name: "dc1", TokenSHA256: []string{"aa"}}},
			Clients: []RelayClient{{Name: "ci", TokenSHA256: "bb", Allow: []string{"dc1/*"}}},
			Log:     Log{Level: "info", Format: "text"},
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*Relay)
		want []string
	}{
		{"same", func(*Relay) {}, nil},
		{"warnings are not keys", func(c *Relay) { c.Warnings = []*Error{{Reason: "x"}} }, nil},
		{"nested scalar", func(c *Relay) { c.HTTP.Listen = "127.0.0.1:9" }, []string{"http.listen"}},
		{"duration", func(c *Relay) { c.HTTP.HeaderTimeout = 2 * time.Second }, []string{"http.header_timeout"}},
		{"list entry", func(c *Relay) { c.Clients[0].Allow = []string{"dc1/a"} }, []string{"clients"}},
		{"several sorted", func(c *Relay) {
			c.Log.Level = "debug"
			c.Agents = append(c.Agents, RelayAgent{Name: "dc2"})
			c.ShutdownGrace = time.Minute
		}, []string{"agents", "log.level", "shutdown_grace"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, new := base(), base()
			tc.edit(new)
			if got := ChangedKeys(old, new); !slices.Equal(got, tc.want) {
				t.Fatalf("ChangedKeys = %v, want %v", got, tc.want)
			}
		})
	}
	// Agent configs work too, and map-valued keys compare whole.
	a1 := &Agent{Servers: []AgentServer{{Name: "n", Env: map[string]string{"A": "1"}}}}
	a2 := &Agent{Servers: []AgentServer{{Name: "n", Env: map[string]string{"A": "2"}}}, Relay: AgentRelay{Token: "secret"}}
	if got := ChangedKeys(a1, a2); !slices.Equal(got, []string{"relay.token", "servers"}) {
		t.Fatalf("agent ChangedKeys = %v", got)
	}
}

func TestKeyIn(t *testing.T) {
	for _, tc := range []struct {
		key  string
		keys []string
		want bool
	}{
		{"http.listen", []string{"http"}, true},
		{"http", []string{"http"}, true},
		{"https", []string{"http"}, false},
		{"log.level", []string{"clients", "log.level"}, true},
		{"log.format", []string{"log.level"}, false},
	} {
		if got := KeyIn(tc.key, tc.keys...); got != tc.want {
			t.Errorf("KeyIn(%q, %v) = %v", tc.key, tc.keys, got)
		}
	}
}

func TestNamedChanges(t *testing.T) {
	old := []RelayClient{{Name: "a", TokenSHA256: "1"}, {Name: "b", TokenSHA256: "2"}, {Name: "c", TokenSHA256: "3"}}
	new := []RelayClient{{Name: "b", TokenSHA256: "2"}, {Name: "c", TokenSHA256: "9"}, {Name: "d", TokenSHA256: "4"}}
	add, rem, ch := NamedChanges(old, new, func(c RelayClient) string { return c.Name })
	if got := DescribeNamed(add, rem, ch); got != "+d -a ~c" {
		t.Fatalf("DescribeNamed = %q", got)
	}
	if got := DescribeNamed(NamedChanges(old, old, func(c RelayClient) string { return c.Name })); got != "" {
		t.Fatalf("no change described as %q", got)
	}
}
