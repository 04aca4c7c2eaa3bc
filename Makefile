# mcptun — common tasks. `make ci` is what CI runs (via .ci/run).
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
TOOLS    := .tools

.PHONY: build ci test test-short adversarial cross demo bench bench-lossy bench-go faults lint fuzz tools clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/mcptun ./cmd/mcptun

# Node 22, the MCP conformance suite and server-everything, installed into
# .tools/ (idempotent; a no-op once installed).
tools:
	bash .ci/install-tools.sh

# What CI runs (.ci/run calls exactly this; the README's test command):
# lint, the builds for the other platforms, every fuzz target for a few
# seconds, then the full test suite. The budget is 10 minutes on 2 cores.
ci: lint cross
	$(MAKE) fuzz FUZZTIME=$(CI_FUZZTIME)
	$(MAKE) test

CI_FUZZTIME ?= 3s

# The full test suite, race detector on, every tool required (nothing skips).
# The adversarial suite runs last, on its own, so its summary line shows.
test: tools
	. $(TOOLS)/env.sh && MCPTUN_REQUIRE_TOOLS=1 $(GO) test -race -count=1 -timeout 30m -skip '^TestAdversarial$$' ./...
	@$(MAKE) --no-print-directory adversarial

# The adversarial suite (internal/e2e, TestAdversarial): prints its summary
# line ("adversarial suite: N cases, 0 failed"), or all its output if a case
# failed.
adversarial:
	@out=$$(mktemp); \
	if $(GO) test -race -count=1 -timeout 10m -run '^TestAdversarial$$' -v ./internal/e2e >"$$out" 2>&1; then \
		grep -o 'adversarial suite: .*' "$$out" | tail -n 1; rm -f "$$out"; \
	else \
		cat "$$out"; rm -f "$$out"; exit 1; \
	fi

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

# staticcheck at a pinned version, built from the Go module proxy (cached
# after the first run).
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above"; exit 1)
	$(GO) vet ./...
	$(STATICCHECK) ./...

# Both roles (one binary) for the other platforms the README lists, so the
# files only they compile (process_bsd.go, hupwatch_other.go,
# stdio_nounix.go) cannot rot.
CROSS ?= darwin/amd64 freebsd/amd64 windows/amd64
cross:
	@for p in $(CROSS); do \
		echo "== build ./cmd/mcptun for $$p"; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -o /dev/null ./cmd/mcptun || exit 1; \
	done

# Every fuzz target in the tree, FUZZTIME each (found by name, so a new
# one is never left out). An input that fails is written to the package's
# testdata/fuzz/FuzzName/, where `make test` runs it from then on: commit it
# with the fix.
FUZZTIME ?= 30s
# A run that ends "context deadline exceeded" with no failing input is the
# go command's fuzzing coordinator missing its own deadline under load
# (no input failed): that target runs once more; a real failure (an input
# written to testdata/fuzz) stops at once.
fuzz:
	@grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r f; do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$f"); do \
			echo "== $$t ($$(dirname $$f))"; \
			out=$$(mktemp); \
			if $(GO) test -run '^$$$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) "./$$(dirname $$f)" >"$$out" 2>&1; then \
				cat "$$out"; \
			elif grep -q 'context deadline exceeded' "$$out" && ! grep -q 'Failing input written' "$$out"; then \
				cat "$$out"; echo "(the fuzzing coordinator missed its deadline, no input failed: once more)"; \
				$(GO) test -run '^$$$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) "./$$(dirname $$f)" || { rm -f "$$out"; exit 1; }; \
			else \
				cat "$$out"; rm -f "$$out"; exit 1; \
			fi; \
			rm -f "$$out"; \
		done; \
	done

clean:
	rm -rf bin
