# mcptun — common tasks. `make test` is what CI runs (via .ci/run).
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
TOOLS    := .tools

.PHONY: build test test-short demo bench bench-lossy bench-go lint fuzz tools clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/mcptun ./cmd/mcptun

# Node 22, the MCP conformance suite and server-everything, installed into
# .tools/ (idempotent; a no-op once installed).
tools:
	bash .ci/install-tools.sh

# The full test suite, race detector on, every tool required (nothing skips).
test: tools
	. $(TOOLS)/env.sh && MCPTUN_REQUIRE_TOOLS=1 $(GO) test -race -count=1 -timeout 30m ./...

# Fast tests without the npm tools (conformance tests skip).
test-short:
	$(GO) test -race -count=1 -short ./...

demo:
	$(GO) run ./cmd/mcptun demo

bench: build
	bash .ci/bench.sh $(BENCH_FLAGS)

bench-lossy: build
	bash .ci/bench.sh --lossy-only $(BENCH_FLAGS)

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

lint:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above"; exit 1)
	$(GO) vet ./...

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime 30s ./internal/config
	$(GO) test -run '^$$' -fuzz FuzzPeek -fuzztime 30s ./mcpproxy
	$(GO) test -run '^$$' -fuzz FuzzReadHead -fuzztime 30s ./internal/httpfwd
	$(GO) test -run '^$$' -fuzz FuzzCopyChunked -fuzztime 30s ./internal/httpfwd
	$(GO) test -run '^$$' -fuzz FuzzReadFrame -fuzztime 30s ./tunnel
	$(GO) test -run '^$$' -fuzz FuzzDecodeHello -fuzztime 30s ./tunnel

clean:
	rm -rf bin
