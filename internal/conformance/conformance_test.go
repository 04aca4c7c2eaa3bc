package conformance

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseSummary(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want []Scenario
	}{
		{"empty", "", nil},
		{"lines", "=== SUMMARY ===\n✓ ping: 1 passed, 0 failed\n✗ tools-call-error: 0 passed, 1 failed\n\nTotal: 1 passed, 1 failed\n",
			[]Scenario{{Name: "ping", Passed: 1}, {Name: "tools-call-error", Failed: 1}}},
		{"noise", "Checks:\n  ✓ not a summary\n✓ x: y passed, 0 failed\n✓ ok-one: 5 passed, 0 failed   \n",
			[]Scenario{{Name: "ok-one", Passed: 5}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSummary([]byte(tt.out))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(got, tt.want, func(a, b Scenario) bool {
				return a.Name == b.Name && a.Passed == b.Passed && a.Failed == b.Failed
			}) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseExpectedFailures(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{"empty", "", nil, ""},
		{"both sections", "# why\nserver:\n  - a-b # because\n  - c\nclient:\n  - d\n", []string{"a-b", "c"}, ""},
		{"unknown section", "servers:\n  - a\n", nil, `unknown section "servers"`},
		{"outside section", "  - a\n", nil, "outside a section"},
		{"duplicate", "server:\n  - a\n  - a\n", nil, "listed twice"},
		{"garbage", "server:\n  a\n", nil, "line 2: cannot parse"},
		{"bad name", "server:\n  - a: b\n", nil, "malformed scenario name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseExpectedFailures([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func FuzzParseExpectedFailures(f *testing.F) {
	f.Add([]byte("server:\n  - a\nclient:\n  - b\n"))
	f.Add([]byte("# c\nserver:\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := ParseExpectedFailures(b)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, n := range list {
			if n == "" || seen[n] {
				t.Fatalf("bad list %q", list)
			}
			seen[n] = true
		}
	})
}

func FuzzParseSummary(f *testing.F) {
	f.Add([]byte("✓ ping: 1 passed, 0 failed\n"))
	f.Add([]byte("✗ a: 99999999999999999999999 passed, 0 failed\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := ParseSummary(b)
		if err != nil {
			return
		}
		for _, s := range list {
			if s.Name == "" || s.Passed < 0 || s.Failed < 0 {
				t.Fatalf("bad scenario %+v", s)
			}
		}
	})
}

func TestReadChecksAndCheckExpected(t *testing.T) {
	dir := t.TempDir()
	write := func(scenario, body string) {
		d := filepath.Join(dir, "server-"+scenario+"-2026-01-02T03-04-05-678Z")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "checks.json"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("tools-call-error", `[{"id":"x","name":"X","status":"FAILURE","errorMessage":"boom"},{"id":"i","status":"INFO"}]`)
	write("ping", `[{"id":"ping","name":"Ping","status":"SUCCESS"},{"id":"w","status":"WARNING"}]`)
	out := "✓ ping: 1 passed, 0 failed\n✗ tools-call-error: 0 passed, 1 failed\n✗ crashed: 0 passed, 1 failed\n"
	res, err := parse("u", []byte(out), dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"ping", "tools-call-error", "crashed"}; !slices.Equal(res.Order, want) {
		t.Fatalf("order %q, want %q", res.Order, want)
	}
	if s := res.Scenarios["ping"]; s.Passed != 1 || s.Warnings != 1 || len(s.Checks) != 2 {
		t.Fatalf("ping: %+v", s)
	}
	if got := res.Failed(); !slices.Equal(got, []string{"tools-call-error", "crashed"}) {
		t.Fatalf("failed %q", got)
	}
	if err := res.CheckExpected([]string{"tools-call-error", "crashed"}); err != nil {
		t.Fatal(err)
	}
	err = res.CheckExpected([]string{"tools-call-error", "ping"})
	if err == nil || !strings.Contains(err.Error(), "crashed failed unexpectedly") || !strings.Contains(err.Error(), "ping passed") {
		t.Fatalf("CheckExpected: %v", err)
	}
	// An expected failure the run never had is a stale entry too.
	err = res.CheckExpected([]string{"tools-call-error", "crashed", "renamed-away"})
	if err == nil || !strings.Contains(err.Error(), "renamed-away is listed as an expected failure but did not run") {
		t.Fatalf("CheckExpected with an entry that did not run: %v", err)
	}
	table := res.Table()
	if !strings.Contains(table, "X: boom") || strings.Contains(table, "passed,") {
		t.Fatalf("table:\n%s", table)
	}

	// A summary that contradicts checks.json is an error, not a guess.
	if _, err := parse("u", []byte("✓ ping: 2 passed, 0 failed\n"), dir); err == nil {
		t.Fatal("parse accepted a summary that contradicts checks.json")
	}
	other := &Results{Order: []string{"ping"}, Scenarios: map[string]Scenario{"ping": {Name: "ping", Passed: 1, Warnings: 1}}}
	if d := res.Diff(other); !strings.Contains(d, "tools-call-error: only in the first run") || strings.Contains(d, "ping") {
		t.Fatalf("diff:\n%s", d)
	}
}

func TestRunReportsMissingBinary(t *testing.T) {
	_, err := Run(context.Background(), "http://127.0.0.1:1/mcp", WithBinary(filepath.Join(t.TempDir(), "nope")))
	if err == nil {
		t.Fatal("Run with a missing binary succeeded")
	}
}

func TestFindToolsHonoursEnv(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(EnvToolsDir, dir)
	t.Setenv(EnvConformanceBin, "")
	if _, err := FindBinary(); err == nil || !strings.Contains(err.Error(), "install-tools") {
		t.Fatalf("FindBinary in an empty tools dir: %v", err)
	}
	bin := filepath.Join(dir, "bin-conformance")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := FindBinary(); err != nil || got != bin {
		t.Fatalf("FindBinary = %q, %v; want %q", got, err, bin)
	}
}

// TestEverythingDirect runs the suite against the reference server and
// requires exactly the failures recorded in testdata: the baseline that runs
// of the same server through the tunnel are compared with.
func TestEverythingDirect(t *testing.T) {
	RequireTools(t)
	ctx := context.Background()
	es, err := StartEverythingHTTP(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := es.Close(); err != nil {
			t.Error(err)
		}
	}()
	if !strings.HasPrefix(es.URL, "http://127.0.0.1:") {
		t.Fatalf("server-everything at %s, want loopback", es.URL)
	}
	res, err := Run(ctx, es.URL, WithTimeout(3*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server-everything, direct:\n%s", res.Table())
	expected, err := LoadExpectedFailures(filepath.Join("testdata", "server-everything.expected-failures.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := res.CheckExpected(expected); err != nil {
		t.Fatal(err)
	}
}

// TestEverythingBindsLoopbackOnly checks the preload: the port the server
// reports must not be reachable on another local address.
func TestEverythingBindsLoopbackOnly(t *testing.T) {
	RequireTools(t)
	es, err := StartEverythingHTTP(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	port := strings.TrimSuffix(strings.TrimPrefix(es.URL, "http://127.0.0.1:"), "/mcp")
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(es.URL)
	if err != nil {
		t.Fatalf("GET %s: %v", es.URL, err)
	}
	resp.Body.Close()
	// 127.0.0.2 is loopback too, but not the address the server bound.
	if resp, err := client.Get("http://127.0.0.2:" + port + "/mcp"); err == nil {
		resp.Body.Close()
		t.Fatalf("server-everything also answers on 127.0.0.2:%s", port)
	}
}

func TestEverythingStdioCommand(t *testing.T) {
	RequireTools(t)
	argv, err := EverythingStdioCommand()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}` + "\n")
	cmd.Dir = t.TempDir()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	if !strings.Contains(string(out), `"serverInfo"`) {
		t.Fatalf("no initialize result from %v: %s", argv, out)
	}
}
