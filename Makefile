# Veloce — see README.md. Every target installs what it needs (make deps).
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go

# Fetched kernels, packages and built guest images live here.
VELOCE_CACHE ?= $(HOME)/.cache/veloce
export VELOCE_CACHE
IMAGE_DIR := $(VELOCE_CACHE)/images/default
BIN := $(CURDIR)/bin
# Tests use this /init instead of building their own.
export VELOCE_INIT := $(BIN)/veloce-init

TEST_TIMEOUT ?= 60m
TESTFLAGS ?=
# The DPDK and RDMA datapaths need cgo and these tags (libdpdk-dev and
# libibverbs-dev, from make deps); without them veloced reports the
# datapath unavailable and uses kernel UDP.
TAGS ?= dpdk rdma

.PHONY: all deps build images test unit lint lint-unit install run bench fuzz clean

all: build

## deps: install Debian packages (QEMU, DPDK, rdma-core, busybox-static, ...)
deps:
	@scripts/deps.sh

## build: build the commands into bin/: pure Go and static (the guest's too),
## then veloced and veloce-bench again with cgo and DPDK
build: deps
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/... ./examples/lunarstream/cmd/lunarstream
	CGO_ENABLED=1 $(GO) build -tags '$(TAGS)' -o $(BIN)/ ./cmd/veloced ./cmd/veloce-bench

## images: fetch the Debian guest kernel (once) and build the default guest image
images: deps build
	$(BIN)/veloce-image kernel
	$(BIN)/veloce-image build --init $(BIN)/veloce-init --out $(IMAGE_DIR) --add $(BIN)/veloce-perf:/bin/veloce-perf

# checklocks (gVisor) checks the // +checklocks:mu annotations on guarded
# fields and functions; lint installs this pinned version once per version.
CHECKLOCKS_VERSION := v0.0.0-20260905035102-160fafc42237
CHECKLOCKS := $(VELOCE_CACHE)/tools/checklocks-$(CHECKLOCKS_VERSION)/checklocks
# The packages checklocks must find clean: all but vhostuser/..., whose
# annotations are not finished yet.
CHECKLOCKS_SKIP := -e '/vhostuser$$' -e '/vhostuser/'

$(CHECKLOCKS):
	GOBIN=$(dir $@) $(GO) install gvisor.dev/gvisor/tools/checklocks/cmd/checklocks@$(CHECKLOCKS_VERSION)

## lint: gofmt, go vet (with and without cgo), checklocks (lock annotations),
## systemd-analyze verify of the unit
lint: lint-unit $(CHECKLOCKS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags '$(TAGS)' ./...
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) vet ./...
	@pkgs=$$($(GO) list ./... | grep -v $(CHECKLOCKS_SKIP)) && \
		echo "checklocks: $$(echo $$pkgs | wc -w) packages" && \
		$(GO) vet -tags '$(TAGS)' -vettool=$(CHECKLOCKS) $$pkgs && \
		$(GO) vet -vettool=$(CHECKLOCKS) $$pkgs

# The systemd unit and the default configuration (dist/); make install
# rewrites the unit's paths for PREFIX.
UNIT := dist/veloced.service
UNIT_EXEC := /usr/local/bin/veloced
UNIT_CONFIG := /etc/veloce/veloced.toml

## lint-unit: systemd-analyze verify dist/veloced.service; any warning fails
## (verify exits 0 on unknown keys). It needs no running systemd, only the
## systemd package (make deps); without it the check is skipped, except
## under CI (CI=true), where it fails.
lint-unit:
	@if ! command -v systemd-analyze >/dev/null; then \
		case "$${CI:-}" in true|1) echo "lint: systemd-analyze not found (Debian package systemd: make deps)"; exit 1 ;; esac; \
		echo "lint: systemd-analyze not found, skipping the check of $(UNIT) (make deps installs it)"; exit 0; \
	fi; \
	d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
	sed 's|$(UNIT_EXEC)|/bin/true|' $(UNIT) > "$$d/veloced.service" && \
	out=$$(systemd-analyze verify "$$d/veloced.service" 2>&1); rc=$$?; \
	if [ $$rc -ne 0 ] || [ -n "$$out" ]; then echo "$(UNIT): systemd-analyze verify:"; echo "$$out"; exit 1; fi; \
	echo "lint: $(UNIT) verified"

# make install: binaries to $(DESTDIR)$(PREFIX)/bin, the unit to
# $(DESTDIR)$(UNITDIR), the configuration to $(DESTDIR)$(CONFDIR).
PREFIX ?= /usr/local
DESTDIR ?=
UNITDIR ?= /lib/systemd/system
CONFDIR ?= /etc/veloce
INSTALL_CMDS := veloced velocectl veloce-perf

## install: veloced, velocectl, veloce-perf, the systemd unit and, unless one
## exists, /etc/veloce/veloced.toml (DESTDIR, PREFIX, UNITDIR, CONFDIR)
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR)
	install -m 0755 $(addprefix $(BIN)/,$(INSTALL_CMDS)) $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|$(UNIT_EXEC)|$(PREFIX)/bin/veloced|' -e 's|$(UNIT_CONFIG)|$(CONFDIR)/veloced.toml|' $(UNIT) > $(BIN)/veloced.service
	install -m 0644 $(BIN)/veloced.service $(DESTDIR)$(UNITDIR)/veloced.service
	@if [ -e $(DESTDIR)$(CONFDIR)/veloced.toml ]; then \
		echo "install: keeping $(DESTDIR)$(CONFDIR)/veloced.toml (the default is dist/veloced.toml)"; \
	else \
		echo "install -m 0644 dist/veloced.toml $(DESTDIR)$(CONFDIR)/veloced.toml"; \
		install -m 0644 dist/veloced.toml $(DESTDIR)$(CONFDIR)/veloced.toml; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

## test: everything — unit tests, fuzz seed corpora, VM and DPDK tests (needs root)
test: deps images lint
	$(GO) test -tags '$(TAGS)' -count=1 -timeout $(TEST_TIMEOUT) $(TESTFLAGS) ./...
	@# and the build without DPDK and RDMA: the plugins report themselves unavailable, veloced falls back to UDP
	CGO_ENABLED=0 $(GO) test -count=1 -run 'Unavailable|NoDPDK|NoRDMA|RDMAFlag|Stub' ./internal/dpdk/ ./plugins/dpdk/ ./internal/rdma/ ./plugins/rdma/ ./cmd/veloced/

## unit: the fast tests only (no VMs)
unit:
	$(GO) test -tags '$(TAGS)' -short ./...

## run: the main job: veloced, a VM streaming messages to an application on the host
run: deps images
	@scripts/run.sh $(BIN) $(IMAGE_DIR)

## bench: benchmarks, as ratios against references measured in the same run
BENCH_PROFILES ?= $(VELOCE_CACHE)/bench
bench: deps build
	$(GO) test -tags '$(TAGS)' -run '^$$' -bench . -benchmem -count=1 ./...
	@rm -f $(BENCH_PROFILES)/veloced-*.pprof
	$(BIN)/veloce-bench vhost --cpuprofile $(BENCH_PROFILES)
	$(BIN)/veloce-bench vhost --packed
	$(BIN)/veloce-bench v2v
	$(BIN)/veloce-bench streams
	$(BIN)/veloce-bench tsn
	$(BIN)/veloce-bench dpdk
	$(BIN)/veloce-bench dpdk --poll --paths raw,dpdk
	$(BIN)/veloce-bench rdma
	$(BIN)/veloce-bench xdp
	$(BIN)/veloce-bench migrate
	$(BIN)/veloce-bench lunar
	@for f in $(BENCH_PROFILES)/veloced-*.pprof; do [ -f "$$f" ] || continue; \
		echo "== $$f (top of the CPU profile)"; $(GO) tool pprof -top -nodecount=12 $(BIN)/veloce-bench "$$f" 2>/dev/null | sed -n '5,18p'; done

## fuzz: run every fuzz target for FUZZTIME each (default 30s)
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf $(BIN)

help:
	@grep -E '^## ' Makefile | sed 's/^## /  make /'
