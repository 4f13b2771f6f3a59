# Atelier build, run and test entry points. `make run` and `make test` are the
# two commands the README promises work on a fresh machine.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X atelier/internal/server.Version=$(VERSION) -X atelier/internal/guest.Version=$(VERSION)
DATA_DIR  ?= $(CURDIR)/.atelier
PORT      ?= 4000
# The edge of `make run`: sandbox hosts at http://<host>.localhost:$(EDGE_PORT) (80 needs root).
EDGE_PORT ?= 4080
SSH_PORT  ?= 2222
# The binary `make run` starts (the README's test points it at its own build).
ATELIER_BIN ?= ./bin/atelier
# Verdaccio for the npm cache's tests and benchmark (.ci/run installs it there).
export ATELIER_TEST_VERDACCIO_DIR ?= /var/cache/atelier-test/verdaccio
# The guest kernel of the QEMU boot test and benchmarks (.ci/run and `make kernel` build it).
export ATELIER_TEST_KERNEL ?= /var/cache/atelier-test/kernel/vmlinux
# The dev-base image the end-to-end test and BenchmarkDevBase boot (make dev-base).
export ATELIER_TEST_DEVBASE ?= /var/cache/atelier-test/images/dev-base.ext4
# The Kubernetes test bed's binaries (internal/kubetest; make kube-testbed builds them).
export ATELIER_TEST_KUBE_DIR ?= /var/cache/atelier-test/kube/v1.37.2

.PHONY: all build web web-deps agent test-image kernel dev-base kube-testbed run test test-short bench lint fmt fuzz clean screenshots

all: build

# The dashboard (web/) is built first and embedded in the binary.
build: web
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/atelier ./cmd/atelier

# The dashboard: Node.js >= 18 and npm are its only prerequisites. The API
# types are generated from the manager's own OpenAPI document, so a field
# renamed in Go fails the type check here. Output: internal/dashboard/dist/app.
NPM ?= npm
web: web-deps
	$(GO) run ./internal/dashboard/openapigen -o web/src/api/openapi.json
	cd web && $(NPM) run build

web-deps: web/node_modules/.installed
web/node_modules/.installed: web/package.json web/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v $(NPM) >/dev/null 2>&1 || { \
		echo "The dashboard needs Node.js >= 18 and npm: apt-get install nodejs npm"; exit 1; }
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' || { \
		echo "Node.js $$(node --version) is too old for the dashboard: it needs 18 or later"; exit 1; }
	cd web && $(NPM) ci --no-audit --no-fund
	@touch $@

# The static guest agent that runs inside every sandbox.
agent:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/atelier-agent ./cmd/atelier-agent

# Minimal guest image (busybox + agent) for the container runtime and its tests;
# built without mounting anything.
test-image: agent
	$(GO) run ./internal/testimage/cmd -o images/test.ext4 -agent bin/atelier-agent

# The guest kernel for the QEMU boot test (cached: a no-op when up to date).
kernel:
	$(GO) run ./cmd/atelier images kernel --output $(ATELIER_TEST_KERNEL)

# The dev-base image for the end-to-end test (cached: a no-op when up to date; root, ~15 min cold).
dev-base: agent
	$(GO) run ./cmd/atelier images build dev-base --agent bin/atelier-agent --output $(ATELIER_TEST_DEVBASE) --cache-dir /var/cache/atelier-test/images/cache

# kube-apiserver, controller-manager, scheduler, kubelet, kubectl and etcd for the Kubernetes
# test bed (internal/kubetest), from the Go module proxy in one go build (cached: a no-op
# when up to date; ~20 min cold on 2 cores).
kube-testbed:
	GO=$(GO) internal/kubetest/build.sh
	GO=$(GO) internal/kubetest/build-netpol.sh

# Local development: mock mode (each sandbox is a local process of yours),
# SQLite under ./.atelier, the dashboard, API and docs on http://localhost:$(PORT).
# Mock mode has no login and runs commands as you, so every listener binds
# 127.0.0.1; RUN_FLAGS=--insecure-mock-listen-any opens them to the network. The
# settings are variables of this command only: `atelier manager config` shows
# them. Stopping it leaves the sandboxes running; `make clean` stops them.
RUN_FLAGS ?=
run: build
	ATELIER_SERVER_MODE=mock ATELIER_DATA_DIR=$(DATA_DIR) ATELIER_STATE_DIR=$(DATA_DIR)/state \
	ATELIER_LOG_DIR=$(DATA_DIR)/log ATELIER_SERVER_PORT=$(PORT) ATELIER_HTTP_PORT=$(EDGE_PORT) \
	ATELIER_SSH_PROXY_PORT=$(SSH_PORT) $(ATELIER_BIN) serve $(RUN_FLAGS)

# Every test, including the fuzz targets' seed corpora and the root-only
# integration tests (they skip with a message when not root). The summary
# prints one line per package, every skipped test with its reason and every
# failure's output (go test -v would print every test). A cold build takes
# several minutes.
test: lint web
	GO=$(GO) $(GO) run ./internal/testsummary/cmd -race -count=1 -timeout 30m ./...

test-short:
	$(GO) test -count=1 ./...

bench: web
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./...

# Every dashboard page at desktop and phone sizes, from a real mock-mode
# manager in Chromium, into ./screenshots (not committed).
SCREENSHOTS ?= $(CURDIR)/screenshots
screenshots: web
	ATELIER_SCREENSHOTS=$(SCREENSHOTS) $(GO) test -count=1 -run '^TestScreenshots$$' -v ./internal/dashboard/
	@echo "screenshots in $(SCREENSHOTS)"

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# Longer fuzzing runs than the seed corpora CI executes.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime 60s ./internal/config
	$(GO) test -run '^$$' -fuzz FuzzCreateSandboxBody -fuzztime 60s ./internal/api

# Mock sandboxes are processes that outlive `make run`: stop them first.
clean:
	@if [ -x bin/atelier ] && [ -d .atelier/state/mock ]; then ATELIER_STATE_DIR=$(CURDIR)/.atelier/state bin/atelier mock-stop; fi
	rm -rf bin .atelier images/test.ext4 internal/dashboard/dist/app screenshots
