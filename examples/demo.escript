#!/usr/bin/env escript
%%! -pa _build/default/lib/evum/ebin
%% The original README's Quick Start, run for real: boots VMs, shows their
%% consoles as messages, runs commands in them, and stops them.
-mode(compile).

main(_) ->
    {ok, _} = application:ensure_all_started(evum),
    step("{ok, Ref} = evm:create([{label, test1}])."),
    T0 = erlang:monotonic_time(),
    {ok, Ref} = evm:create([{label, test1}]),
    io:format("{ok,~p}   % booted in ~p ms~n", [Ref, ms_since(T0)]),
    step("flush(). % the boot messages"),
    timer:sleep(200),
    flush(),
    step("evum:send(Ref, \"hostname\")."),
    io:format("~p~n", [evum:send(Ref, "hostname")]),
    step("flush()."),
    timer:sleep(200),
    flush(),
    step("evum:cmd(Ref, \"uname -a; exit 3\"). % exact output and exit status"),
    io:format("~p~n", [evum:cmd(Ref, "uname -a; exit 3")]),
    step("mcons:version(Ref)."),
    io:format("~p~n", [mcons:version(Ref)]),
    step("[evm:create([{label, L}, {hostname, L}]) || L <- [vm2, vm3, vm4]]. % three more, at once"),
    Self = self(),
    T1 = erlang:monotonic_time(),
    %% Each is owned by a process of its own (a VM stops when its owner
    %% exits), which keeps it until the demo ends.
    Owners = [
        spawn_link(fun() ->
            Self ! {L, evm:create([{label, L}, {hostname, atom_to_list(L)}])},
            receive done -> ok end
        end)
     || L <- [vm2, vm3, vm4]
    ],
    Others = [receive {L, {ok, Pid}} -> Pid end || L <- [vm2, vm3, vm4]],
    io:format("~p   % in ~p ms~n", [Others, ms_since(T1)]),
    [io:format("~p: ~p~n", [Vm, evum:cmd(Vm, "echo $((6 * 7)) from $(hostname)")]) || Vm <- Others],
    step("{ok, Web} = evm:create([{label, web}, {net, user}]). % behind evum's gateway"),
    {ok, Web} = evm:create([{label, web}, {net, user}]),
    step("evum:cmd(Web, \"nc -ll -p 7777 -e /bin/sh </dev/null >/dev/null 2>&1 &\"). % a shell on a port"),
    io:format("~p~n", [evum:cmd(Web, "setsid nc -ll -p 7777 -e /bin/sh </dev/null >/dev/null 2>&1 &")]),
    timer:sleep(300),
    step("{ok, Port} = evum:forward(Web, {tcp, 0, 7777}). % from the host's 127.0.0.1"),
    {ok, Port} = evum:forward(Web, {tcp, 0, 7777}),
    io:format("~p~n", [{ok, Port}]),
    Nc = "echo 'uname -n; cat /proc/cpuinfo | grep vendor' | busybox nc -w 2 127.0.0.1 " ++ integer_to_list(Port),
    step("os:cmd(\"" ++ Nc ++ "\")."),
    io:format("~s", [os:cmd(Nc)]),
    All = [Ref, Web | Others],
    step("[evm:stop(Vm) || Vm <- [Ref, Web | Others]]."),
    OsPids = [maps:get(os_pid, evum:info(Vm)) || Vm <- All],
    io:format("~p~n", [[evm:stop(Vm) || Vm <- All]]),
    [Owner ! done || Owner <- Owners],
    flush_quiet(),
    case [P || P <- OsPids, filelib:is_dir("/proc/" ++ integer_to_list(P))] of
        [] -> io:format("~nAll VMs stopped; none of their UML processes (~p) is left.~n", [OsPids]);
        Left -> io:format("~nUML processes still running: ~p~n", [Left]), halt(1)
    end.

step(Text) ->
    io:format("~n~s~n", [Text]).

flush() ->
    receive
        Msg ->
            io:format("Shell got ~p~n", [Msg]),
            flush()
    after 0 -> ok
    end.

flush_quiet() ->
    receive
        _ -> flush_quiet()
    after 100 -> ok
    end.

ms_since(T) ->
    erlang:convert_time_unit(erlang:monotonic_time() - T, native, millisecond).
