// Package admin serves a role's admin listener: /healthz (the process is
// alive), /readyz (it takes work), /metrics (Prometheus text), /api/status
// (JSON) and a status page at /. The page and the probes are open; the
// data (/metrics, /api/status) asks for the admin token when one is set.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Source is what the admin listener reports on: a relay or an agent.
type Source interface {
	// Ready reports whether the role takes work, and if not why.
	Ready() (ok bool, why string)
	// Status is what /api/status answers.
	Status() *Status
}

// Config configures a Server.
type Config struct {
	Listen string // host:port
	// Token, if set, must come as "Authorization: Bearer <token>" on
	// /metrics and /api/status.
	Token    string
	Registry *prometheus.Registry
	Source   Source
	Logger   *slog.Logger
	// Level, if set, is the role's log level, which /api/loglevel reads
	// and changes (as SIGUSR1/SIGUSR2 do).
	Level Level
}

// Level is a log level an operator may change while the role runs
// (logging.Level).
type Level interface {
	Get() slog.Level
	Configured() slog.Level
	// SetText sets the level by name ("debug", "info", "warn", "error";
	// "reset" for the configured one) and returns the level in force.
	SetText(name string) (slog.Level, error)
}

//go:embed page
var page embed.FS

// Handler returns the admin endpoints as one handler.
func Handler(cfg Config) http.Handler {
	var want [32]byte
	if cfg.Token != "" {
		want = sha256.Sum256([]byte(cfg.Token))
	}
	authed := func(next http.Handler) http.Handler {
		if cfg.Token == "" {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
			got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
			// Hashes compared, so the time taken does not depend on
			// the token's length either.
			if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="mcptun admin"`)
				http.Error(w, "admin token required: send Authorization: Bearer <the token in admin.token_file>", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if ok, why := cfg.Source.Ready(); !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %s\n", why)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", authed(promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{})))
	mux.Handle("GET /api/status", authed(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(cfg.Source.Status())
	})))
	if cfg.Level != nil {
		mux.Handle("GET /api/loglevel", authed(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeLevel(w, cfg.Level)
		})))
		// PUT /api/loglevel?level=debug (or a body of just the name):
		// the token guards it like the data endpoints.
		mux.Handle("PUT /api/loglevel", authed(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name := r.URL.Query().Get("level")
			if name == "" {
				b, _ := io.ReadAll(io.LimitReader(r.Body, 64))
				name = strings.TrimSpace(string(b))
			}
			before := cfg.Level.Get()
			if _, err := cfg.Level.SetText(name); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if cfg.Logger != nil {
				cfg.Logger.Warn("log level changed", "level", levelName(cfg.Level.Get()), "was", levelName(before), "by", "/api/loglevel")
			}
			writeLevel(w, cfg.Level)
		})))
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		b, _ := page.ReadFile("page/index.html")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		w.Header().Set("X-Frame-Options", "DENY")
		_, _ = w.Write(b)
	})
	return mux
}

// Server is a running admin listener.
type Server struct {
	ln   net.Listener
	srv  *http.Server
	wg   sync.WaitGroup
	addr string
}

// Start listens on cfg.Listen and serves the admin endpoints.
func Start(cfg Config) (*Server, error) {
	if cfg.Source == nil || cfg.Registry == nil {
		return nil, errors.New("admin: Config.Source and Config.Registry are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin: listen on %s: %w", cfg.Listen, err)
	}
	s := &Server{ln: ln, addr: ln.Addr().String(), srv: &http.Server{
		Handler:           Handler(cfg),
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener stopped", "err", err)
		}
	}()
	log.Info("admin listener started", "url", "http://"+s.addr+"/", "token", cfg.Token != "")
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.addr }

// Close stops the server; nil is a no-op.
func (s *Server) Close() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		_ = s.srv.Close()
	}
	s.wg.Wait()
}

func writeLevel(w http.ResponseWriter, l Level) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]string{"level": levelName(l.Get()), "configured": levelName(l.Configured())})
}

func levelName(l slog.Level) string { return strings.ToLower(l.String()) }
