# evum: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what is missing first (Debian packages, as root or via sudo).

# Debian's user-mode-linux stays as a second kernel (and uml_switch's peer in
# the benchmarks); evum's own is built from Debian's kernel source with
# gcc, make, patch, flex, bison, bc and libelf-dev.
APT_PACKAGES = user-mode-linux busybox-static uml-utilities vde2 libvdeplug-slirp \
	debootstrap debian-archive-keyring wget e2fsprogs gzip \
	erlang erlang-dev elixir rebar3 cargo libslirp-dev libglib2.0-dev pkg-config procps ca-certificates \
	gcc make patch libc6-dev musl-tools flex bison bc libelf-dev tshark
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps packages kernel compile demo test test-rust test-erlang test-elixir test-consumers fuzz bench lint fmt clean

all: compile

# Everything evum needs: Debian's packages, then evum's own UML kernel.
deps: packages kernel

# Installs the Debian packages evum needs that are not installed yet (cargo
# only if no cargo is on the PATH: a rustup toolchain will do).
packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
		[ $$p = cargo ] && command -v cargo >/dev/null 2>&1 && continue; \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Builds evum's UML kernel once per machine (a download of about 160 MB
# and a few minutes of compiling) into evum's cache; a no-op once built.
kernel: packages
	cargo run --release --quiet -p evum_core --bin evum-kernel -- build

compile: deps
	rebar3 compile

# Boots VMs and shows them working: the original README's Quick Start.
demo: compile
	escript examples/demo.escript

test: test-rust test-erlang test-elixir test-consumers

test-rust: deps
	cargo test --workspace

test-erlang: compile
	rebar3 eunit

test-elixir: deps
	mix test

test-consumers: compile
	sh test/consumers/rebar3_consumer.sh
	sh test/consumers/mix_consumer.sh

# The parsers' property tests (the `props` modules beside each parser) with
# 20000 cases each instead of the few hundred `cargo test` runs. A failing
# case is saved under native/evum_core/proptest-regressions/ and tried
# first by every later run.
fuzz: packages
	PROPTEST_CASES=20000 cargo test -p evum_core --lib props

bench: compile
	sh bench/run

# Formatting, lints, and the API docs (rebar3 edoc into doc/, which fails
# on a doc comment it cannot read).
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	mix format --check-formatted
	rebar3 edoc

fmt:
	cargo fmt --all
	mix format

clean:
	rm -rf _build target priv/libevum_nif.so
