%% The lab's showcase: three guests of the `host' dist each run a
%% distributed Erlang node (the host's erl) on an evum switch; the cluster
%% forms, a partition cuts one node away and both sides see `nodedown' from
%% inside the guests, a heal brings it back, and a bad link (loss, delay)
%% is survived. The nodes (test/guest/lab.escript) write what they see to
%% /tmp/events in their guest.
-module(evum_lab_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 60000).
-define(NODES, [{lab_a, "10.0.7.1"}, {lab_b, "10.0.7.2"}, {lab_c, "10.0.7.3"}]).

lab_test_() ->
    {setup, fun() -> {ok, _} = application:ensure_all_started(evum) end, fun(_) -> ok end, [
        {timeout, 300, {"a partition and a heal, seen by distributed Erlang nodes in the guests", fun cluster/0}}
    ]}.

node_name(Address) -> "lab@" ++ Address.

cluster() ->
    {ok, S} = evum_switch:start([anonymous, {seed, 1}]),
    Script = script(),
    Vms = [start_node(S, Label, Address, Script) || {Label, Address} <- ?NODES],
    [A, B, C] = Vms,
    Names = [node_name(Addr) || {_, Addr} <- ?NODES],
    try
        %% The cluster forms: every node sees the other two.
        [wait_events(Vm, [{nodeup, N} || N <- Names -- [node_name(Addr)]], 60) || {Vm, {_, Addr}} <- lists:zip(Vms, ?NODES)],
        %% A alone: A sees B and C go, B and C see A go, and not each other.
        ok = evum_switch:partition(S, [[A], [B, C]]),
        [NA, NB, NC] = Names,
        wait_events(A, [{nodedown, NB}, {nodedown, NC}], 30),
        wait_events(B, [{nodedown, NA}], 30),
        wait_events(C, [{nodedown, NA}], 30),
        ?assertNot(lists:member({nodedown, NC}, events(B))),
        %% Healed, the cluster forms again.
        ok = evum_switch:heal(S),
        wait_events(A, [{nodeup, NB}, {nodeup, NC}], 60, 2),
        %% A bad link between A and B: 30% loss and 50 ms of delay each way.
        ok = evum_switch:impair(S, {A, B}, #{loss => 0.3, delay => 50}),
        ok = evum_switch:impair(S, {B, A}, #{loss => 0.3, delay => 50}),
        timer:sleep(5000),
        Downs = length([E || {nodedown, _} = E <- events(A)]),
        ?debugFmt("with 30% loss and 50 ms on A-B for 5 s, A has seen ~b nodedowns in all", [Downs]),
        ok = evum_switch:clear(S, {A, B}),
        ok = evum_switch:clear(S, {B, A}),
        {ok, 0, _} = evum:cmd(A, "ping -c 1 -W 2 10.0.7.2")
    after
        [evm:stop(Vm) || Vm <- Vms],
        evum_switch:stop(S)
    end.

script() ->
    {ok, Text} = file:read_file(filename:join([filename:dirname(?FILE), "guest", "lab.escript"])),
    Text.

%% A guest of the host dist on the switch, at Address, running a node.
start_node(Switch, Label, Address, Script) ->
    {ok, Vm} = evum:start([{label, Label}, {switch, Switch}, {mem, 256}, {timeout, ?BOOT}]),
    {ok, 0, _} = evum:cmd(Vm, ["ifconfig eth0 ", Address, " netmask 255.255.255.0 up && ifconfig lo up"]),
    {ok, 0, _} = evum:cmd(Vm, ["cat > /tmp/lab.escript <<'EOF'\n", Script, "EOF\n"]),
    Peers = string:join([node_name(A) || {_, A} <- ?NODES, A =/= Address], " "),
    %% epmd first: erl -name starts it, escript does not.
    Start = ["cd /tmp && epmd -daemon && HOME=/tmp nohup escript /tmp/lab.escript ", node_name(Address), " '", Peers,
             "' >/tmp/lab.log 2>&1 &"],
    {ok, 0, _} = evum:cmd(Vm, Start),
    Vm.

%% The node events a guest's node has written, in order.
events(Vm) ->
    case evum:cmd(Vm, "cat /tmp/events 2>/dev/null") of
        {ok, _, Text} ->
            [
                {binary_to_atom(E), binary_to_list(N)}
             || Line <- binary:split(Text, <<"\n">>, [global, trim_all]),
                [E, N] <- [binary:split(Line, <<" ">>)]
            ];
        _ ->
            []
    end.

%% Waits up to Secs for each of Wanted to have happened (Times times).
wait_events(Vm, Wanted, Secs) ->
    wait_events(Vm, Wanted, Secs, 1).

wait_events(Vm, Wanted, Secs, Times) ->
    Events = events(Vm),
    Missing = [W || W <- Wanted, length([E || E <- Events, E =:= W]) < Times],
    case Missing of
        [] ->
            ok;
        _ when Secs > 0 ->
            timer:sleep(1000),
            wait_events(Vm, Wanted, Secs - 1, Times);
        _ ->
            {ok, _, Log} = evum:cmd(Vm, "cat /tmp/lab.log"),
            error({events_missing, Missing, Events, Log})
    end.
