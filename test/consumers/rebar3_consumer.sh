#!/bin/sh
# Builds a throwaway rebar3 project that depends on this checkout, and boots a
# VM from it: evum works as a rebar3 dependency, with no Hex.
set -eu
evum=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/evum-consumer-rebar3.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

mkdir -p "$work/app/src"
cd "$work/app"
# rebar3 fetches a git dependency from its commits; to test the working tree
# as it is, point rebar3 at a copy of it committed into a repository of its own.
git clone -q "$evum" "$work/evum"
(cd "$evum" && git ls-files -mo --exclude-standard -z) |
    (cd "$evum" && xargs -0 -r cp --parents -t "$work/evum" 2>/dev/null) || true
(cd "$work/evum" && git add -A && git -c user.name=ci -c user.email=ci@localhost commit -qm wip --allow-empty)
cat > rebar.config <<CONFIG
{deps, [{evum, {git, "file://$work/evum", {branch, "main"}}}]}.
CONFIG
cat > src/consumer.app.src <<'APP'
{application, consumer, [
    {description, "evum as a rebar3 dependency"},
    {vsn, "0.1.0"},
    {applications, [kernel, stdlib, evum]}
]}.
APP
cat > src/consumer.erl <<'ERL'
-module(consumer).
-export([main/0]).
main() ->
    {ok, Vm} = evm:create([]),
    {ok, 0, <<"evm\n">>} = evum:cmd(Vm, "hostname"),
    ok = evm:stop(Vm).
ERL
rebar3 compile
erl -noshell -pa _build/default/lib/*/ebin -eval 'consumer:main(), halt().'
echo "rebar3 consumer: ok"
