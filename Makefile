# per-docker-roles. `make demo` shows it working; `make test` proves it.
SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
STATICCHECK := $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build test unit e2e packaging-test lint generate generate-check demo release bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/per-docker-roles ./cmd/per-docker-roles
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/fakeaws ./cmd/fakeaws

# Everything: unit and privileged integration tests (real kernel, real
# dockerd, real aws_signing_helper), the end-to-end scenarios, and the
# shipped artefacts (Ansible role into a scratch root, arm64 under qemu).
test: unit e2e packaging-test

unit:
	$(GO) test -race -count=1 -timeout 15m ./...

e2e: build
	./scripts/e2e.sh

packaging-test:
	./scripts/test-ansible.sh
	./scripts/test-arm64.sh
	./scripts/systemd/test-units.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags e2e ./e2e/
	./scripts/lint-packaging.sh

# Regenerate the BPF objects and Go bindings (needs clang).
generate:
	$(GO) generate ./...

# CI: the committed objects must match their sources.
generate-check: generate
	@git diff --exit-code --stat -- '*_bpfel.go' '*_bpfel.o' || { echo "generated BPF files are stale: run make generate and commit"; exit 1; }

demo: build
	./scripts/demo.sh

release:
	VERSION=$(VERSION) COMMIT=$(COMMIT) DATE=$(DATE) ./scripts/release.sh

bench:
	./scripts/bench/run.sh

clean:
	rm -rf $(BIN) dist
