# mcptun — common tasks. `make test` is what CI runs (via .ci/run).
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
TOOLS    := .tools

.PHONY: build test test-short demo bench bench-lossy bench-go faults lint fuzz tools clean

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

# The fault suite (README, Development: Faults): relay, agents, stdio
# children and the HTTP upstream killed, frozen and terminated under load,
# three rounds each. FAULTS_FLAGS=-short is the version `make test` runs
# (TestFaultsShort); -fault NAME picks one (-list names them).
faults: build
	$(GO) build -o bin/mcptest-server ./internal/mcptest/cmd/mcptest-server
	$(GO) run ./internal/faults/cmd/faults -mcptun bin/mcptun -fixture bin/mcptest-server $(FAULTS_FLAGS)

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

lint:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above"; exit 1)
	$(GO) vet ./...

# Every fuzz target in the tree, FUZZTIME each (found by name, so a new
# one is never left out).
FUZZTIME ?= 30s
fuzz:
	@grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r f; do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$f"); do \
			echo "== $$t ($$(dirname $$f))"; \
			$(GO) test -run '^$$$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) "./$$(dirname $$f)" || exit 1; \
		done; \
	done

clean:
	rm -rf bin
