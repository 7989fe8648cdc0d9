# shunt — see README.md. `make test` is what CI runs (as root, from .ci/run).
GO       ?= go
BIN      := bin/shunt
# The init container's binary (cmd/shunt-init: iptables, cleanup, validate, nothing else linked).
INIT_BIN := bin/shunt-init
SHIM_BIN := bin/shunt-cni
SHARED   ?= ../shared
FUZZTIME ?= 15s
# The compiler of the eBPF programs: Debian bookworm's, which CI installs (.ci/deps). Another
# clang produces another (working) object, which check-generate reports as a difference.
CLANG    ?= clang-14

.PHONY: all build test unit compat bench fuzz demo lint clean generate check-generate image

all: build test

# Static: no dynamic loader at start-up (an init container starts it once per pod). bin/shunt-init
# is stripped of its symbol table and DWARF (-s -w: half the init image; panics still print their
# stacks); bin/shunt keeps them.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/shunt
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(INIT_BIN) ./cmd/shunt-init
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(SHIM_BIN) ./cmd/shunt-cni

# The container images, each one static binary alone in an OCI image layout tarball, built without a
# container engine and reproducible (timestamps from SOURCE_DATE_EPOCH, default the commit's time):
# the init image, $(IMAGE)-init, holds bin/shunt-init as /shunt-init, its entrypoint (Istio's
# injector starts it with args: [istio-iptables, ...]); the node image, $(IMAGE), holds bin/shunt as
# /shunt (the chart's) and bin/shunt-cni, the CNI plugin's shim, as /shunt-cni.
IMAGE             ?= ghcr.io/shuntmesh/shunt
INIT_IMAGE        ?= $(IMAGE)-init
IMAGE_TAG         ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

image: build
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run ./deploy/image -binary $(INIT_BIN) -file shunt-init \
		-o bin/shunt-init-image.tar -name $(INIT_IMAGE) -tag $(IMAGE_TAG) -revision "$$(git rev-parse HEAD 2>/dev/null)"
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run ./deploy/image -binary $(BIN) -extra $(SHIM_BIN) -o bin/shunt-image.tar \
		-name $(IMAGE) -tag $(IMAGE_TAG) -revision "$$(git rev-parse HEAD 2>/dev/null)"

# Everything: vet, unit tests, privileged tests and e2e flows (root), and the Istio compatibility
# checks in all three modes, for both binaries, when ../shared/compat is present.
test: build lint unit compat

# The e2e tests of the capture commands run a second time against the init container's binary,
# bin/shunt-init, which must behave exactly as shunt's capture commands do.
INIT_E2E := ^(TestApplyTwice|TestCaptureLists|TestCleanup.*|TestDNS.*|TestDryRun|TestFlagsIptablesIgnoredFailEarly|TestFlagsValidateChangesNothing|TestFlows|TestIstioQuirk.*|TestNative.*|TestOtherNamespace|TestReconcile.*|TestValidate|TestDemo)$$

unit: build
	$(GO) test -count=1 -timeout 30m ./...
	cd e2e && $(GO) test -count=1 -timeout 30m -run '$(INIT_E2E)' . -args -shunt $(abspath bin/shunt-init)

compat: build
	@if [ -x $(SHARED)/compat/check-istio-compat ]; then \
		fail=0; \
		for bin in $(BIN) bin/shunt-init; do for dir in istio istio-cni istio-nft; do for mode in "" --apply; do \
			case $$bin:$$dir in *shunt-init:istio-cni) continue;; esac; \
			out=$$($(SHARED)/compat/check-istio-compat $$mode $$bin $(SHARED)/compat/$$dir) || { echo "$$out" | grep -v '^PASS'; fail=1; }; \
			echo "$$(basename $$bin) $$dir: $$(echo "$$out" | tail -n 1)"; \
		done; done; done; exit $$fail; \
	else echo "compat: $(SHARED)/compat not found, skipped"; fi

# Median wall time of `shunt istio-iptables` and `shunt-init istio-iptables` (iptables-nft,
# iptables-legacy, --native-nftables) vs a bare iptables-restore of the same rules (and Istio's
# istio-iptables or pilot-agent with ISTIO=PATH), shunt-init's package initialisation and the init
# image's size (after `make image`), the in-process nftables apply, the node agent's drift audit of 100
# pods (CPU per audit), the node agent's share of an ADD it runs for the shim, then CNI ADD latency on a node
# namespace with a real kube-apiserver, then the data paths (root).
ISTIO ?=
bench: build
	$(GO) run ./bench -shunt $(BIN) -shunt-init $(INIT_BIN) -init-image bin/shunt-init-image.tar $(if $(ISTIO),-istio $(ISTIO))
	@$(GO) test -count=1 -run '^$$' -bench '^BenchmarkApply' -benchtime 500x ./nftables/ | grep -E '^(Benchmark|ok)'
	@$(GO) test -count=1 -run '^$$' -bench '^BenchmarkAudit$$' -benchtime 5x ./cni/install/ | grep -E '^(Benchmark|ok)'
	@$(GO) test -count=1 -run '^$$' -bench '^BenchmarkRunAdd$$' -benchtime 200x ./cni/ | grep -E '^(Benchmark|ok)'
	@cd e2e && $(GO) test -count=1 -run '^$$' -bench '^BenchmarkCNIAdd$$' -benchtime 1x -args -shunt $(abspath $(BIN)) \
		| grep -v '^\s*{"time"'
	@cd e2e && $(GO) test -count=1 -run '^$$' -bench '^BenchmarkDataPath$$' -benchtime 1x -args -shunt $(abspath $(BIN))
	@cd e2e && $(GO) test -count=1 -run '^$$' -bench '^BenchmarkContainerdRunPodSandbox$$' -benchtime 1x -args -shunt $(abspath $(BIN))

# Every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
		for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
			echo "fuzz $$pkg $$t"; $(GO) test $$pkg -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME); \
		done; \
	done

# A throwaway pod namespace with the reference sidecar, traffic for every flow, and a table of the
# path each connection took (root; installs missing OS packages).
demo: build
	@.ci/deps
	@cd e2e && $(GO) test -run '^TestDemo$$' -args -demo -shunt $(abspath $(BIN)) $(DEMOFLAGS)

# Rebuild the eBPF programs and their Go bindings (ebpf/redirect_bpfel.{go,o}) with bpf2go.
generate:
	BPF2GO_CC=$(CLANG) $(GO) generate ./ebpf/

# Fail when the committed eBPF output is not what `make generate` makes of the committed source.
check-generate: generate
	@git diff --exit-code -- ebpf/ && test -z "$$(git status --porcelain -- ebpf/)" || { \
		echo "generated files are not up to date, run 'make generate' and commit ebpf/" >&2; exit 1; }

lint:
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || { echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...

clean:
	rm -rf bin
