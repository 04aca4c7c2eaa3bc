package tunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mcptun/mcptun/internal/devcert"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testAgent = "lab"
	testToken = "secret-lab-token"
)

var (
	certOnce sync.Once
	certVal  tls.Certificate
	certPin  string
	certPEM  []byte
	certErr  error
)

// testCert is one self-signed certificate for 127.0.0.1 shared by the tests.
func testCert(t testing.TB) (tls.Certificate, string, []byte) {
	t.Helper()
	certOnce.Do(func() {
		var keyPEM []byte
		certPEM, keyPEM, certErr = devcert.Generate()
		if certErr != nil {
			return
		}
		certVal, certErr = tls.X509KeyPair(certPEM, keyPEM)
		if certErr == nil {
			certPin = PinSHA256(certVal.Leaf)
		}
	})
	if certErr != nil {
		t.Fatal(certErr)
	}
	return certVal, certPin, certPEM
}

// caFile writes the test certificate to a file usable as ca_file.
func caFile(t *testing.T) string {
	_, _, pem := testCert(t)
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// logBuf collects a component's log; tests read it and print it on failure.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) count(substr string) int { return strings.Count(l.String(), substr) }

func newLog(t *testing.T, name string) (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", name, lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type relay struct {
	*Server
	log    *logBuf
	events chan string // "name up" / "name down"
}

// startRelay listens on 127.0.0.1:0 (or cfg.Listen) with agent "lab".
func startRelay(t *testing.T, cfg ServerConfig) *relay {
	t.Helper()
	cert, _, _ := testCert(t)
	logger, lb := newLog(t, "relay")
	r := &relay{log: lb, events: make(chan string, 100)}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	if cfg.Agents == nil {
		cfg.Agents = []AgentCredential{{Name: testAgent, TokenSHA256: sha256.Sum256([]byte(testToken))}}
	}
	cfg.Logger = logger
	cfg.OnAgentChange = func(name string, up bool) {
		state := "down"
		if up {
			state = "up"
		}
		r.events <- name + " " + state
	}
	s, err := Listen(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Server = s
	t.Cleanup(func() { s.Close() })
	return r
}

func (r *relay) waitEvent(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-r.events:
		if got != want {
			t.Fatalf("agent event %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no agent event, want %q", want)
	}
}

// agentConfig is a ClientConfig for agent "lab" at addr, pinning the test
// certificate.
func agentConfig(t *testing.T, addr string) ClientConfig {
	_, pin, _ := testCert(t)
	tlsCfg, err := ClientTLS("127.0.0.1", "", pin)
	if err != nil {
		t.Fatal(err)
	}
	return ClientConfig{
		Name:       testAgent,
		Address:    addr,
		Token:      testToken,
		TLSConfig:  tlsCfg,
		Servers:    []OfferedServer{{Name: "git", Kind: KindStdio}, {Name: "wiki", Kind: KindHTTP}},
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
	}
}

type agent struct {
	*Client
	log  *logBuf
	stop func() // cancels Run and waits for it and the echo server
}

// startAgent runs a Client with an echo server on its listener: each stream
// gets prefix, then everything it sent, then a half-close.
func startAgent(t *testing.T, cfg ClientConfig, prefix string) *agent {
	t.Helper()
	logger, lb := newLog(t, "agent "+prefix)
	cfg.Logger = logger
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	runErr := make(chan error, 1)
	wg.Go(func() { runErr <- c.Run(ctx) })
	wg.Go(func() { serveEcho(c.Listener(), prefix) })
	var once sync.Once
	a := &agent{Client: c, log: lb}
	a.stop = func() {
		once.Do(func() {
			cancel()
			c.Listener().Close()
			wg.Wait()
			if err := <-runErr; err != nil {
				t.Errorf("Run returned %v, want nil after cancel", err)
			}
		})
	}
	t.Cleanup(a.stop)
	return a
}

func serveEcho(ln net.Listener, prefix string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			if _, err := io.WriteString(c, prefix); err != nil {
				return
			}
			if _, err := io.Copy(c, c); err != nil {
				return
			}
			c.(Stream).CloseWrite()
		})
	}
}

// roundTrip sends payload on a new stream to the agent and returns what
// came back.
func roundTrip(ctx context.Context, r *relay, agent string, payload []byte) ([]byte, error) {
	st, err := r.Dial(ctx, agent)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(15 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(payload)
		if err == nil {
			err = st.CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(st)
	if err := <-werr; err != nil {
		return got, err
	}
	return got, rerr
}

func wantRefused(t *testing.T, err error, code string) *RefusedError {
	t.Helper()
	var ref *RefusedError
	if !errors.As(err, &ref) {
		t.Fatalf("error %v (%T), want *RefusedError", err, err)
	}
	if ref.Code != code {
		t.Fatalf("refusal code %q (%v), want %q", ref.Code, ref, code)
	}
	return ref
}
