# batchd — make targets. `make test` is what CI runs (.ci/run); `make demo`
# runs everything locally. Both install what they need first (make deps).

GO       ?= go
BIN      := bin/batchd
DEVBIN   := bin/batchd-dev
# A stamp, not the npm bin: npm gives package files their tarball mtimes.
AZURITE  := tools/azurite/node_modules/.batchd-installed
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# golangci-lint, pinned: built from the Go module proxy into tools/bin.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := tools/bin/golangci-lint-$(GOLANGCI_LINT_VERSION)
TESTFLAGS ?=

.PHONY: all deps chromium build test demo bench soak fuzz lint release clean

all: build

## deps: Go modules and Azurite (npm, into tools/azurite). Needs Go and Node.js.
deps: $(AZURITE)
	$(GO) mod download

$(AZURITE): tools/azurite/package.json tools/azurite/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make: npm not found. Azurite (the storage emulator used by tests and batchd-dev) needs Node.js 20+ and npm: apt-get install -y nodejs npm" >&2; exit 1; }
	cd tools/azurite && npm ci --no-audit --no-fund --loglevel=error
	@test -x tools/azurite/node_modules/.bin/azurite-blob || { echo "make: npm ci did not install azurite-blob" >&2; exit 1; }
	@touch $@

## chromium: Debian's Chromium, for the status page's browser test (installed when missing)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  echo "make: installing chromium (Debian package) for the status page's browser test"; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium >/dev/null; }

$(GOLANGCI_LINT):
	GOBIN=$(CURDIR)/tools/bin $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv tools/bin/golangci-lint $@

## build: the batchd binary and the local stack, batchd-dev, in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/batchd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(DEVBIN) ./cmd/batchd-dev

## test: lint (golangci-lint, shellcheck, systemd-analyze), the race-enabled test suite and the 60 s soak (what CI runs)
test: deps chromium lint
	$(GO) test -race -timeout 20m $(TESTFLAGS) ./...
	$(MAKE) --no-print-directory soak SOAK=60s

## demo: everything on this machine, no Azure account: `batchd-dev` (Ctrl-C
## stops it and everything it started). DEMOFLAGS are passed on, e.g.
## `make demo DEMOFLAGS=--keep` or `DEMOFLAGS='--http 127.0.0.1:9090'`.
DEMOFLAGS ?=
demo: deps build
	./$(DEVBIN) $(DEMOFLAGS)

## bench: the benchmark suite (see docs/BENCHMARKS.md)
bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 120m ./...

## soak: the chaos soak: every trigger, injected Azure faults, batchd killed
## about every 30 s, NATS restarted twice; fails unless lost=0 duplicate=0 and
## the secrets audit finds nothing. SOAK=60s is the short form make test runs.
## CLUSTER=1: three nats-server processes (R3) and two replicas; NATS nodes
## leading the meta group, streams and buckets are SIGKILLed in turn,
## replicas too, then every node and replica restarts in a rolling upgrade;
## it also fails if the simulator saw more jobs running than max_running_jobs.
SOAK ?= 10m
CLUSTER ?=
soak: deps
	BATCHD_SOAK=$(SOAK) BATCHD_SOAK_CLUSTER=$(CLUSTER) $(GO) test -v -count=1 -run '^TestSoak$$' -timeout 60m ./cmd/batchd/

## fuzz: every Fuzz target of every package, FUZZTIME each (their seed corpora also run in make test)
FUZZTIME ?= 30s
fuzz: deps
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

## lint: golangci-lint (pinned, installed into tools/bin; config tools/golangci.yml: errcheck,
## staticcheck, govet, revive's exported rules, gocritic, bodyclose, ... and gofmt), shellcheck
## (deploy/**/*.sh, .ci/run), systemd-analyze verify (deploy/**/*.service)
# verify insists that ExecStart's binary exists, so it checks a copy of each
# unit whose ExecStart= runs /bin/true; any warning it prints fails the target.
lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run --config tools/golangci.yml ./...
	@command -v shellcheck >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  echo "lint: installing shellcheck (Debian package)"; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq shellcheck >/dev/null; }
	shellcheck .ci/run $$(find deploy -name '*.sh' | sort)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	for unit in $$(find deploy -name '*.service' -type f | sort); do \
	  copy="$$tmp/$$(basename "$$unit")"; \
	  sed 's|^ExecStart=.*|ExecStart=/bin/true|' "$$unit" > "$$copy"; \
	  echo "systemd-analyze verify $$unit"; \
	  out=$$(systemd-analyze verify --man=no "$$copy" 2>&1) || { echo "$$out"; exit 1; }; \
	  if [ -n "$$out" ]; then echo "$$out"; exit 1; fi; \
	done

## release: static binaries for linux/amd64 and linux/arm64 with checksums
release:
	@mkdir -p dist
	for arch in amd64 arm64; do \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/batchd-linux-$$arch ./cmd/batchd || exit 1; \
	done
	cd dist && sha256sum batchd-linux-* > SHA256SUMS

clean:
	rm -rf bin dist
