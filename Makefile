# evum: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what is missing first (Debian packages, as root or via sudo).

APT_PACKAGES = user-mode-linux busybox-static uml-utilities vde2 debootstrap e2fsprogs erlang erlang-dev elixir rebar3 cargo
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps compile demo test test-rust test-erlang test-elixir test-consumers bench lint fmt clean

all: compile

# Installs the Debian packages evum needs, unless every tool is already there.
deps:
	@missing=""; \
	for tool in linux busybox uml_mconsole uml_switch vde_switch erl erlc elixir mix rebar3 cargo; do \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; \
	done; \
	[ -f /usr/lib/erlang/usr/include/erl_nif.h ] || missing="$$missing erl_nif.h"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages (missing:$$missing)"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
			$$(for p in $(APT_PACKAGES); do \
				[ $$p = cargo ] && command -v cargo >/dev/null 2>&1 && continue; echo $$p; done); \
	fi

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

bench: compile
	sh bench/run

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	mix format --check-formatted

fmt:
	cargo fmt --all
	mix format

clean:
	rm -rf _build target priv/libevum_nif.so
