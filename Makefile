# The one source of truth for building, testing and running Ambit; .ci/run calls these targets.
# Run as root on Debian: the network-namespace tests, the demo and the bench need it.

CARGO ?= cargo
APT_PACKAGES := iproute2 nftables iptables tcpdump openssl containernetworking-plugins
# kubectl drives the operator's tests against the in-memory API server (crates/kube-emulator).
KUBECTL_PACKAGE := kubernetes-client
BENCH_PACKAGES := iperf3 haproxy util-linux

.PHONY: deps bench-deps build demo test lint bench fmt fuzz-smoke crds

# Installs the Debian packages in $(1) that are missing.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

# What the tests and the demo need.
deps:
	$(call apt_install,$(APT_PACKAGES))
	@command -v kubectl >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(KUBECTL_PACKAGE); }
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest

bench-deps: deps
	$(call apt_install,$(BENCH_PACKAGES))

build:
	$(CARGO) build --release --workspace

# Two-node ztunnel demo in network namespaces: mTLS on the wire, live policy, metrics.
demo: deps build
	./target/release/ambitctl demo --ztunnel ./target/release/ztunnel

# The whole test suite: unit, in-memory, and network-namespace tests (root).
test: deps
	$(CARGO) nextest run --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerates crds/*.yaml from the Rust types; `make test` fails while they differ.
crds:
	$(CARGO) run -q -p ambit-crds --bin crdgen

# Throughput, latency, connection rate and memory against the direct path, same run.
bench: bench-deps build
	./target/release/ambit-bench --ztunnel ./target/release/ztunnel
	$(CARGO) bench -p ambit-cni-agent --bench pod_add

# Every fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each, from its tracked seeds plus the
# untracked corpus it grows. Needs the nightly toolchain (libFuzzer and ASan); a crash fails the
# target and leaves the input in fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 20
fuzz-smoke:
	@$(CARGO) +nightly --version >/dev/null 2>&1 || { \
		echo "fuzz-smoke: the nightly toolchain is missing; run: rustup toolchain install nightly" >&2; \
		exit 1; }
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(CARGO) +nightly fuzz build
	@cd fuzz && for target in $$($(CARGO) +nightly fuzz list); do \
		echo "fuzz-smoke: $$target for $(FUZZ_SECONDS)s"; \
		mkdir -p corpus/$$target && \
		$(CARGO) +nightly fuzz run $$target corpus/$$target seeds/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
			|| exit 1; \
	done
