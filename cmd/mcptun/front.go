package main

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// serveFront serves ln the way relay and agent both do: fast accepts every
// connection and forwards the exchanges it takes on the connection itself;
// hs serves the connections fast hands over. Both serving goroutines are
// counted in wg and end when fast and hs are closed.
func serveFront(wg *sync.WaitGroup, log *slog.Logger, fast *httpfwd.ConnServer, hs *http.Server, ln net.Listener) {
	stopped := func(err error) bool {
		return err == nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed)
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := hs.Serve(fast.Handoff()); !stopped(err) {
			log.Error("http server stopped", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := fast.Serve(ln); !stopped(err) {
			log.Error("listener stopped", "err", err)
		}
	}()
}
