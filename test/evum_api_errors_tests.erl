%% Every exported function of the public API, called with arguments of the
%% wrong type and with VMs and switches that do not exist: each answers
%% `{error, Reason}' and raises nothing, as a caller would check.
-module(evum_api_errors_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

api_errors_test_() ->
    {setup, fun() -> {ok, _} = application:ensure_all_started(evum) end, fun(_) -> ok end, [
        {"evm", fun() -> check(evm_calls()) end},
        {"evum", fun() -> check(evum_calls()) end},
        {"evum_switch", fun() -> check(switch_calls()) end},
        {"mcons", fun() -> check(mcons_calls()) end},
        {"evum_ctl", fun() -> check(ctl_calls()) end},
        {"every export is tried", fun every_export_is_tried/0},
        {"every error met here is in the README's Errors", fun errors_documented/0}
    ]}.

%% A pid that has ended.
dead() ->
    Pid = spawn(fun() -> ok end),
    Ref = monitor(process, Pid),
    receive
        {'DOWN', Ref, process, Pid, _} -> Pid
    end.

%% Things no VM or switch is.
missing() -> [nosuch_vm_or_switch, dead()].
garbage() -> [42, {bad}, make_ref(), 1.5, [1 | 2]].
targets() -> missing() ++ garbage().

evm_calls() ->
    [{evm, create, [A]} || A <- [42, [{switch, nosuch_switch}], [{net, 42}], [{label, 42}], [{owner, dead()}]]] ++
        [{evm, start_link, [A]} || A <- [42, [{owner, nosuch_owner}]]] ++
        [{evm, stop, [T]} || T <- targets()] ++
        [{evm, destroy, [A]} || A <- [42, {bad}]] ++
        [{evm, fetch, [A]} || A <- [nosuch_dist, 42]] ++
        [{evm, fetch, [nosuch_dist, not_a_fun]}].

evum_calls() ->
    Vms = targets(),
    lists:append([
        [
            {evum, stop, [Vm]},
            {evum, send, [Vm, "hostname"]},
            {evum, send, [Vm, "hostname", 100]},
            {evum, give_away, [Vm, self()]},
            {evum, pause, [Vm]},
            {evum, resume, [Vm]},
            {evum, kill, [Vm]},
            {evum, clock_jump, [Vm, 60]},
            {evum, puts, [Vm, "x"]},
            {evum, write, [Vm, "x"]},
            {evum, cmd, [Vm, "true"]},
            {evum, cmd, [Vm, "true", 100]},
            {evum, system, [Vm, "version"]},
            {evum, reboot, [Vm]},
            {evum, info, [Vm]},
            {evum, ifconfig, [Vm, {"eth0", "10.0.0.1", "255.255.255.0"}]},
            {evum, ifconfig, [Vm, {bad}]},
            {evum, ping, [Vm, "10.0.0.1"]},
            {evum, forward, [Vm, {tcp, 8080}]},
            {evum, unforward, [Vm, {tcp, 8080}]},
            {evum, forwards, [Vm]}
        ]
     || Vm <- Vms
    ]) ++
        [{evum, start, [A]} || A <- [42, [{bad_option_here, 1}]]] ++
        [{evum, sniff, [S]} || S <- targets()].

switch_calls() ->
    Frame = binary:copy(<<0>>, 60),
    lists:append([
        [
            {evum_switch, stop, [S]},
            {evum_switch, attach, [S]},
            {evum_switch, attach, [S, [promiscuous]]},
            {evum_switch, detach, [S, 1]},
            {evum_switch, send, [S, Frame]},
            {evum_switch, send, [S, 1, Frame]},
            {evum_switch, ports, [S]},
            {evum_switch, mac_table, [S]},
            {evum_switch, counters, [S]},
            {evum_switch, control_socket, [S]},
            {evum_switch, bess_socket, [S]},
            {evum_switch, group, [S]},
            {evum_switch, eth_option, [S, <<2, 0, 0, 0, 0, 1>>]},
            {evum_switch, bess_option, [S, <<2, 0, 0, 0, 0, 1>>]},
            {evum_switch, joined, [S, self(), <<2, 0, 0, 0, 0, 1>>]},
            {evum_switch, bind, [S, "10.0.0.1", <<2, 0, 0, 0, 0, 1>>]},
            {evum_switch, forward, [S, {tcp, "127.0.0.1", 0, "10.0.2.15", 80}, undefined]},
            {evum_switch, unforward, [S, {tcp, "127.0.0.1", 8080}]},
            {evum_switch, forwards, [S]},
            {evum_switch, gateway_counters, [S]},
            {evum_switch, partition, [S, [[1], [2]]]},
            {evum_switch, partition, [S, not_groups]},
            {evum_switch, heal, [S]},
            {evum_switch, partitions, [S]},
            {evum_switch, cut, [S, 1, 2]},
            {evum_switch, restore, [S, 1, 2]},
            {evum_switch, capture, [S, all, "/nonexistent/x.pcap"]},
            {evum_switch, capture, [S, all, "/nonexistent/x.pcap", [{max_bytes, 0}]]},
            {evum_switch, stop_capture, [S, 1]},
            {evum_switch, capture, [S, all, {pid, self()}, [{max_frames, 0}]]},
            {evum_switch, impair, [S, 1, #{loss => 0.5}]},
            {evum_switch, impair, [S, 1, not_a_map]},
            {evum_switch, clear, [S, 1]},
            {evum_switch, impairments, [S]},
            {evum_switch, subscribe, [S]},
            {evum_switch, unsubscribe, [S]}
        ]
     || S <- targets()
    ]) ++
        [{evum_switch, start, [A]} || A <- [42, [{busy_poll, -1}], [{max_macs, 0}], [{storm_limit, fast}], [{seed, -1}]]].

mcons_calls() ->
    lists:append([
        [
            {mcons, version, [Vm]},
            {mcons, help, [Vm]},
            {mcons, halt, [Vm]},
            {mcons, reboot, [Vm]},
            {mcons, config, [Vm, "eth0"]},
            {mcons, config, [Vm, "eth0", "x"]},
            {mcons, remove, [Vm, "eth0"]},
            {mcons, sysrq, [Vm, "m"]},
            {mcons, cad, [Vm]},
            {mcons, stop, [Vm]},
            {mcons, go, [Vm]},
            {mcons, log, [Vm, "x"]},
            {mcons, proc, [Vm, "meminfo"]},
            {mcons, request, [Vm, "version"]}
        ]
     || Vm <- targets()
    ]).

ctl_calls() ->
    [{evum_ctl, start, [A]} || A <- [42, {bad}, [1 | 2]]] ++ [{evum_ctl, start, [42, 42]}].

%% Each call returns `{error, _}'; what did not, as {Call, What}.
check(Calls) ->
    Wrong = [{Call, What} || {M, F, A} = Call <- Calls, What <- [outcome(M, F, A)], What =/= error],
    ?assertEqual([], Wrong).

outcome(M, F, A) ->
    try apply(M, F, A) of
        {error, _} -> error;
        Other -> {returned, Other}
    catch
        Class:Reason -> {raised, Class, Reason}
    end.

%% The lists above name every function the public modules export (but
%% gen_server callbacks and module_info).
every_export_is_tried() ->
    Tried = lists:usort([{M, F, length(A)} || {M, F, A} <- evm_calls() ++ evum_calls() ++ switch_calls() ++
                                                  mcons_calls() ++ ctl_calls()]),
    Callbacks = [init, handle_call, handle_cast, handle_info, terminate, code_change, module_info],
    Exported = lists:usort([
        {M, F, Arity}
     || M <- [evm, evum, evum_switch, mcons, evum_ctl],
        {F, Arity} <- M:module_info(exports),
        not lists:member(F, Callbacks),
        %% Without arguments there is nothing to get wrong.
        Arity > 0,
        %% stop/0, switch/0 of evum_ctl and child_spec/1 take no process.
        not lists:member({M, F}, [{evm, child_spec}])
    ]),
    ?assertEqual([], Exported -- Tried).

%% The README's Errors section names every error these calls return, by its
%% tag: the atom, or a tuple's first element.
errors_documented() ->
    Calls = evm_calls() ++ evum_calls() ++ switch_calls() ++ mcons_calls() ++ ctl_calls(),
    Tags = lists:usort([tag(Reason) || {M, F, A} <- Calls, {error, Reason} <- [catch apply(M, F, A)]]),
    Section = readme_errors(),
    Missing = [T || T <- Tags, not documented(T, Section)],
    ?assertEqual([], Missing).

tag(Reason) when is_tuple(Reason) -> element(1, Reason);
tag(Reason) -> Reason.

documented(Tag, Section) ->
    Name = atom_to_binary(Tag),
    lists:any(fun(Form) -> binary:match(Section, Form) =/= nomatch end, [
        <<"`", Name/binary, "`">>, <<"{", Name/binary, ",">>, <<"{", Name/binary, "}">>
    ]).

readme_errors() ->
    [_, Rest] = binary:split(evum_readme_tests:readme(), <<"### Errors">>),
    [Section | _] = binary:split(Rest, <<"\n## ">>),
    Section.
