package tunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestDecodeOffers(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string // server names, or nil with wantErr
		wantErr    string
	}{
		{"ok", `{"type":"offers","version":1,"servers":[{"name":"git","kind":"stdio"},{"name":"wiki","kind":"http"}]}`, []string{"git", "wiki"}, ""},
		{"empty list", `{"type":"offers","version":1,"servers":[]}`, []string{}, ""},
		{"unknown fields", `{"type":"offers","version":1,"servers":[{"name":"a","kind":"http","x":1}],"more":true}`, []string{"a"}, ""},
		{"newer version", `{"type":"offers","version":2,"servers":[]}`, nil, "unsupported offers version 2"},
		{"no list", `{"type":"offers","version":1}`, nil, "no servers list"},
		{"null list", `{"type":"offers","version":1,"servers":null}`, nil, "no servers list"},
		{"bad name", `{"type":"offers","version":1,"servers":[{"name":"../x","kind":"http"}]}`, nil, "invalid server name"},
		{"bad kind", `{"type":"offers","version":1,"servers":[{"name":"a","kind":"ftp"}]}`, nil, `kind "ftp"`},
		{"twice", `{"type":"offers","version":1,"servers":[{"name":"a","kind":"http"},{"name":"a","kind":"stdio"}]}`, nil, "offered twice"},
		{"wrong type", `{"type":"hello","version":1,"servers":[]}`, nil, `type "hello"`},
		{"not json", `{"type":`, nil, "not a JSON object"},
		{"servers not a list", `{"type":"offers","version":1,"servers":{"a":1}}`, nil, "malformed offers frame"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeOffers([]byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				if tc.name == "newer version" && !errors.Is(err, ErrOffersVersion) {
					t.Fatalf("err %v does not wrap ErrOffersVersion", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			names := []string{}
			for _, s := range got {
				names = append(names, s.Name)
			}
			if strings.Join(names, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("servers %v, want %v", names, tc.want)
			}
		})
	}
}

// TestOffersFrameRoundTrip: what SetServers writes is what the relay
// decodes.
func TestOffersFrameRoundTrip(t *testing.T) {
	var b bytes.Buffer
	want := []OfferedServer{{Name: "git", Kind: KindStdio}, {Name: "notes", Kind: KindHTTP}}
	if err := writeFrame(&b, offers{Type: typeOffers, Version: OffersVersion, Servers: want}); err != nil {
		t.Fatal(err)
	}
	body, err := readFrame(&b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeOffers(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("decoded %v, want %v", got, want)
	}
}

// FuzzDecodeOffers: the relay parses offers frames from authenticated
// but untrusted agents; no input may panic it, and what it accepts must be
// a list it can route by.
func FuzzDecodeOffers(f *testing.F) {
	f.Add([]byte(`{"type":"offers","version":1,"servers":[{"name":"git","kind":"stdio"}]}`))
	f.Add([]byte(`{"type":"offers","version":1,"servers":[]}`))
	f.Add([]byte(`{"type":"offers","version":2}`))
	f.Add([]byte(`{"type":"offers","version":1,"servers":[{"name":"a","kind":"http"},{"name":"a","kind":"http"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		servers, err := decodeOffers(body)
		if err != nil {
			if servers != nil {
				t.Fatal("servers returned with an error")
			}
			return
		}
		if servers == nil || len(servers) > maxServers {
			t.Fatalf("accepted %d servers (nil: %v)", len(servers), servers == nil)
		}
		seen := map[string]bool{}
		for _, s := range servers {
			if !ValidName(s.Name) || (s.Kind != KindStdio && s.Kind != KindHTTP) || seen[s.Name] {
				t.Fatalf("accepted bad server %+v", s)
			}
			seen[s.Name] = true
		}
		// Accepted lists survive a round trip.
		b, err := json.Marshal(offers{Type: typeOffers, Version: OffersVersion, Servers: servers})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeOffers(b); err != nil {
			t.Fatalf("re-encoded offers refused: %v", err)
		}
	})
}

// TestSetServersUpdatesRelay: an agent that changes its servers tells the
// relay on the session it has (no reconnect): a removed server is no
// longer offered, a new one is, and the stream it had open keeps working.
func TestSetServersUpdatesRelay(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, ServerConfig{})
	a := startAgent(t, agentConfig(t, r.Addr()), "A:")
	r.waitEvent(t, testAgent+" up")
	if _, offered := r.Offers(testAgent, "git"); !offered {
		t.Fatal("git not offered after the hello")
	}
	st, err := r.Dial(ctx, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	if err := a.SetServers([]OfferedServer{{Name: "wiki", Kind: KindHTTP}, {Name: "notes", Kind: KindStdio}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "notes offered", func() bool { _, ok := r.Offers(testAgent, "notes"); return ok })
	if _, offered := r.Offers(testAgent, "git"); offered {
		t.Fatal("git still offered after the agent removed it")
	}
	if n := r.log.count("tunnel: agent disconnected"); n != 0 {
		t.Fatalf("the session ended (%d disconnects) for an offers change", n)
	}
	// The stream opened before the change still works.
	if _, err := st.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "A:ping" {
		t.Fatalf("old stream read %q, %v", buf, err)
	}
	if !strings.Contains(r.log.String(), "added=notes removed=git") {
		t.Fatalf("relay log lacks the offers change:\n%s", r.log.String())
	}

	// A list the relay would refuse is refused by the agent.
	if err := a.SetServers([]OfferedServer{{Name: "x", Kind: "ftp"}}); err == nil {
		t.Fatal("SetServers took a bad kind")
	}
	// A reconnect's hello carries the new list.
	r.Server.mu.Lock()
	for _, rep := range r.Server.agents[testAgent].byTag {
		for _, a := range rep.conns {
			a.sess.Close()
		}
	}
	r.Server.mu.Unlock()
	r.waitEvent(t, testAgent+" down")
	r.waitEvent(t, testAgent+" up")
	st2, _ := r.Agent(testAgent)
	if len(st2.Servers) != 2 || st2.Servers[1].Name != "notes" {
		t.Fatalf("after reconnect the relay has %v", st2.Servers)
	}
}

// TestSetAgentsDisconnectsRemovedCredential: a relay reload that drops one
// replica's token hash disconnects that replica (it is told why) and
// refuses it from then on; the other replica's session is untouched.
func TestSetAgentsDisconnectsRemovedCredential(t *testing.T) {
	tokA, tokB := testToken, "second-token"
	credA := AgentCredential{Name: testAgent, TokenSHA256: sha256.Sum256([]byte(tokA))}
	credB := AgentCredential{Name: testAgent, TokenSHA256: sha256.Sum256([]byte(tokB))}
	r := startRelay(t, ServerConfig{Agents: []AgentCredential{credA, credB}})
	a := startAgent(t, agentConfig(t, r.Addr()), "A:")
	cfgB := agentConfig(t, r.Addr())
	cfgB.Token = tokB
	b := startAgent(t, cfgB, "B:")
	r.waitEvent(t, testAgent+" up")
	r.waitEvent(t, testAgent+" up")
	tagA, tagB := ReplicaTag(credA.TokenSHA256), ReplicaTag(credB.TokenSHA256)
	stA, _ := r.Agent(testAgent)
	if len(stA.Replicas) != 2 {
		t.Fatalf("%d replicas, want 2", len(stA.Replicas))
	}

	n, err := r.SetAgents([]AgentCredential{credA})
	if err != nil || n != 1 {
		t.Fatalf("SetAgents = %d, %v; want 1 disconnected", n, err)
	}
	waitFor(t, "replica B gone", func() bool {
		st, _ := r.Agent(testAgent)
		return len(st.Replicas) == 1 && st.Replicas[0].Tag == tagA
	})
	waitFor(t, "agent B told why", func() bool { return b.log.count("credential_removed") > 0 })
	waitFor(t, "agent B refused on reconnect", func() bool { return b.log.count("bad credential") > 0 })
	if !a.Connected() {
		t.Fatal("replica A lost its session")
	}
	if _, err := roundTrip(testCtx(t), r, testAgent, []byte("x")); err != nil {
		t.Fatalf("replica A unreachable: %v", err)
	}
	_ = tagB

	// Bad tables are refused whole, the running one stays.
	if _, err := r.SetAgents([]AgentCredential{credA, credA}); err == nil {
		t.Fatal("SetAgents took one token twice")
	}
	if _, err := roundTrip(context.Background(), r, testAgent, []byte("x")); err != nil {
		t.Fatalf("after a refused SetAgents: %v", err)
	}
}
