#!/bin/sh
# evum as a path dependency of another Mix project: a throwaway project in
# a temporary directory, with {:evum, path: <this repo>} as its only
# dependency, compiled offline (no Hex), then a VM booted from `mix run`.
# The consumer's build stays in its own _build; this repo's _build and deps
# are not touched (the NIF is built by native/build-nif into this repo's
# target/ and priv/, as for any build of it).
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/evum-mix-consumer.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

# Mix must neither fetch nor ask for Hex: no deps but a path one, and no
# prompts.
export MIX_ENV=dev HEX_OFFLINE=1
unset MIX_BUILD_PATH MIX_BUILD_ROOT MIX_DEPS_PATH MIX_EXS MIX_LOCKFILE MIX_PROJECT

mkdir -p "$work/consumer/lib"
cd "$work/consumer"

cat >mix.exs <<EOF
defmodule Consumer.MixProject do
  use Mix.Project

  def project do
    [app: :consumer, version: "0.1.0", deps: [{:evum, path: "$repo"}]]
  end

  def application, do: [extra_applications: [:logger]]
end
EOF

cat >check.exs <<'EOF'
priv = :code.priv_dir(:evum)
File.exists?(Path.join(priv, "libevum_nif.so")) or raise "no NIF in #{priv}"
{:ok, vm} = Evm.create(label: :mix_consumer)
{:ok, 0, "evm\n"} = Evum.cmd(vm, "hostname")
%{runtime_dir: dir} = Evum.info(vm)
:ok = Evm.stop(vm)
false = File.exists?(dir)
IO.puts("evum VM from #{priv}: ok")
EOF

mix deps.compile </dev/null
mix compile </dev/null
# The dependency's priv/ is where code:priv_dir(evum) points.
test -e _build/dev/lib/evum/priv/libevum_nif.so
ls -l _build/dev/lib/evum/
mix run --no-deps-check check.exs </dev/null

echo "mix consumer: ok"
