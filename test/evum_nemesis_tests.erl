%% Faults made on purpose, with real guests: a partition and a heal, a
%% one-way cut, a paused and resumed guest, a killed one.
-module(evum_nemesis_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 60000).

nemesis_test_() ->
    {setup, fun() -> {ok, _} = application:ensure_all_started(evum) end, fun(_) -> ok end, [
        {timeout, 180, {T, fun() -> ?MODULE:F() end}}
     || {T, F} <- [
            {"a partition: pings inside a group pass, across fail, from the first; heal restores", partition},
            {"a cut drops one way only", cut},
            {"a capture holds exactly the frames sent, as tshark reads them", capture},
            {"delay and loss on a link show in the guests' pings; clear ends them", impair},
            {"a paused guest answers nothing until resumed", pause},
            {"kill ends a guest as a crash, its disk kept", kill},
            {"a subscriber hears of ports, MAC moves, faults and impairments", events},
            {"a capture to a process, bounded; a guest's clock jumps", capture_to_process},
            {"a 2 Mbit/s link carries guest TCP within 10% of that rate", rate}
        ]
    ]}.

vm(Switch, Label, Address) ->
    {ok, Vm} = evm:create([{label, Label}, {switch, Switch}, {timeout, ?BOOT}]),
    {ok, 0, _} = evum:cmd(Vm, ["ifconfig eth0 ", Address, " netmask 255.255.255.0 up"]),
    Vm.

%% Whether one ping from Vm to Address is answered (within a second).
answers(Vm, Address) ->
    case evum:cmd(Vm, ["ping -c 1 -W 1 ", Address], 10000) of
        {ok, 0, _} -> true;
        {ok, _, _} -> false
    end.

three(Switch) ->
    [vm(Switch, L, A) || {L, A} <- [{nem_a, "10.0.9.1"}, {nem_b, "10.0.9.2"}, {nem_c, "10.0.9.3"}]].

partition() ->
    {ok, S} = evum_switch:start([anonymous]),
    [A, B, C] = Vms = three(S),
    %% Learned both ways first: ARP is not what the test is about.
    [true = answers(X, Y) || {X, Y} <- [{A, "10.0.9.2"}, {B, "10.0.9.3"}, {A, "10.0.9.3"}]],
    ok = evum_switch:partition(S, [[A], [nem_b, C]]),
    ?assertNot(answers(A, "10.0.9.2")),
    ?assertNot(answers(C, "10.0.9.1")),
    ?assert(answers(B, "10.0.9.3")),
    {ok, #{groups := [[PortA], [_, _] = BC], cuts := []}} = evum_switch:partitions(S),
    {ok, Ports} = evum_switch:ports(S),
    ?assertEqual([A], [Vm || #{id := Id, peer := Vm} <- Ports, Id =:= PortA]),
    ?assertEqual(lists:sort([B, C]), lists:sort([Vm || #{id := Id, peer := Vm} <- Ports, lists:member(Id, BC)])),
    ?assert(lists:sum([N || #{drops_nemesis := N} <- Ports]) > 0),
    ok = evum_switch:heal(S),
    ?assert(answers(A, "10.0.9.2")),
    ?assertEqual({ok, #{groups => [], cuts => []}}, evum_switch:partitions(S)),
    ?assertEqual({error, {unknown_target, nosuch_vm}}, evum_switch:partition(S, [[nosuch_vm]])),
    [ok = evm:stop(Vm) || Vm <- Vms],
    evum_switch:stop(S).

cut() ->
    {ok, S} = evum_switch:start([anonymous]),
    [A, B, C] = Vms = three(S),
    true = answers(A, "10.0.9.2"),
    ok = evum_switch:cut(S, A, B),
    %% A's requests do not reach B; B's reach A, but A's replies do not come back.
    #{id := PortB} = port_of(S, B),
    Before = maps:get(frames_out, port_of(S, B)),
    ?assertNot(answers(A, "10.0.9.2")),
    ?assertNot(answers(B, "10.0.9.1")),
    ?assertEqual(Before, maps:get(frames_out, port_of(S, B))),
    ?assert(maps:get(drops_nemesis, port_of(S, A)) > 0),
    %% The others are untouched.
    ?assert(answers(C, "10.0.9.1")),
    ?assert(answers(C, "10.0.9.2")),
    {ok, #{cuts := [{_, PortB}]}} = evum_switch:partitions(S),
    ok = evum_switch:restore(S, A, B),
    ?assert(answers(A, "10.0.9.2")),
    [ok = evm:stop(Vm) || Vm <- Vms],
    evum_switch:stop(S).

capture() ->
    {ok, S} = evum_switch:start([anonymous]),
    [A, _B, C] = Vms = three(S),
    true = answers(A, "10.0.9.2"),
    true = answers(C, "10.0.9.1"),
    File = filename:join("/tmp", "evum-capture-" ++ os:getpid() ++ ".pcap"),
    file:delete(File),
    {ok, Capture} = evum_switch:capture(S, A, File),
    ?assertMatch({error, {capture, _}}, evum_switch:capture(S, all, File)),
    {ok, 0, _} = evum:cmd(A, "ping -c 5 -i 0.2 10.0.9.2", 30000),
    %% Not A's: not in A's capture.
    {ok, 0, _} = evum:cmd(C, "ping -c 3 -i 0.2 10.0.9.2", 30000),
    {ok, #{frames := Frames, missed := 0}} = evum_switch:stop_capture(S, Capture),
    Icmp = os:cmd("tshark -r " ++ File ++ " -Y icmp -T fields -e ip.src -e ip.dst -e icmp.type 2>/dev/null"),
    Lines = string:lexemes(Icmp, "\n"),
    ?assertEqual(5, length([L || L <- Lines, string:lexemes(L, "\t") =:= ["10.0.9.1", "10.0.9.2", "8"]]), Icmp),
    ?assertEqual(5, length([L || L <- Lines, string:lexemes(L, "\t") =:= ["10.0.9.2", "10.0.9.1", "0"]]), Icmp),
    ?assertEqual(10, length(Lines), Icmp),
    ?assert(Frames >= 10),
    ?assertEqual({error, unknown_capture}, evum_switch:stop_capture(S, Capture)),
    ok = file:delete(File),
    [ok = evm:stop(Vm) || Vm <- Vms],
    evum_switch:stop(S).

impair() ->
    {ok, S} = evum_switch:start([anonymous, {seed, 17}]),
    [A, B, _C] = Vms = three(S),
    true = answers(A, "10.0.9.2"),
    %% 50 ms (10 ms of jitter) on the frames to B: the echo requests.
    ok = evum_switch:impair(S, B, #{delay => 50, jitter => 10}),
    Median = median_rtt(A, "10.0.9.2", 10),
    ?assert(Median >= 40.0 andalso Median < 120.0, Median),
    ?assert(median_rtt(A, "10.0.9.3", 5) < 30.0),
    %% 30% loss from A to B on top, then clean again.
    ok = evum_switch:impair(S, {A, B}, #{loss => 0.3}),
    {ok, _, Out} = evum:cmd(A, "ping -c 40 -i 0.05 -W 1 10.0.9.2", 60000),
    {match, [Received]} = re:run(Out, "([0-9]+) packets received", [{capture, all_but_first, list}]),
    ?assert(list_to_integer(Received) < 38, Out),
    {ok, Links} = evum_switch:impairments(S),
    ?assertEqual(2, length(Links)),
    ok = evum_switch:clear(S, {A, B}),
    ok = evum_switch:clear(S, B),
    ?assertEqual({ok, []}, evum_switch:impairments(S)),
    ?assert(median_rtt(A, "10.0.9.2", 5) < 30.0),
    ?assertMatch({error, {bad_impairment, {loss, 2}}}, evum_switch:impair(S, B, #{loss => 2})),
    [ok = evm:stop(Vm) || Vm <- Vms],
    evum_switch:stop(S).

%% The median of N pings' round trips, in ms.
median_rtt(Vm, Address, N) ->
    {ok, 0, Out} = evum:cmd(Vm, ["ping -c ", integer_to_list(N), " -i 0.1 ", Address], 60000),
    {match, Times} = re:run(Out, "time=([0-9.]+) ms", [global, {capture, all_but_first, list}]),
    Sorted = lists:sort([list_to_float(T) || [T] <- Times]),
    lists:nth(length(Sorted) div 2 + 1, Sorted).

port_of(Switch, Vm) ->
    evum_port_security_tests:port_of(Switch, Vm).

pause() ->
    {ok, S} = evum_switch:start([anonymous]),
    [A, B, C] = Vms = three(S),
    true = answers(A, "10.0.9.2"),
    {ok, 0, Up0} = evum:cmd(B, "cut -d' ' -f1 /proc/uptime"),
    ok = evum:pause(B),
    T0 = erlang:monotonic_time(millisecond),
    ?assertNot(answers(A, "10.0.9.2")),
    timer:sleep(1000),
    ok = evum:resume(B),
    Paused = (erlang:monotonic_time(millisecond) - T0) / 1000,
    ?assert(answers(A, "10.0.9.2")),
    {ok, 0, Up1} = evum:cmd(B, "cut -d' ' -f1 /proc/uptime"),
    Advanced = binary_to_float(string:trim(Up1)) - binary_to_float(string:trim(Up0)),
    %% What the guest's clock did over the pause (it reads the host's).
    ?debugFmt("paused ~.2f s; the guest's uptime advanced ~.2f s over it", [Paused, Advanced]),
    ?assert(Advanced >= Paused),
    [ok = evm:stop(Vm) || Vm <- [A, C]],
    ok = evm:stop(B),
    ?assertEqual({error, not_running}, evum:pause(B)),
    evum_switch:stop(S),
    Vms.

kill() ->
    Disk = filename:join("/tmp", "evum-nemesis-disk-" ++ os:getpid()),
    ok = file:write_file(Disk, binary:copy(<<0>>, 1 bsl 20)),
    {ok, Vm} = evm:create([{ubd, 1, Disk}, {timeout, ?BOOT}]),
    %% Written through to the host file, as a database's commit is.
    {ok, 0, _} = evum:cmd(Vm, "echo kept | dd of=/dev/ubdb conv=fsync 2>/dev/null"),
    #{os_pid := OsPid} = evum:info(Vm),
    Ref = monitor(process, Vm),
    ok = evum:kill(Vm),
    receive
        {'DOWN', Ref, process, Vm, Reason} -> ?assertEqual({shutdown, {signal, sigkill}}, Reason)
    after 10000 -> error(not_killed)
    end,
    ?assert(receive {evum, Vm, {exit, {signal, sigkill}}} -> true after 1000 -> false end),
    ?assertNot(filelib:is_dir("/proc/" ++ integer_to_list(OsPid))),
    %% The disk is as the kill left it.
    {ok, <<"kept\n", _/binary>>} = file:read_file(Disk),
    ?assertEqual({error, not_running}, evum:kill(Vm)),
    ok = file:delete(Disk).

events() ->
    {ok, S} = evum_switch:start([anonymous]),
    ok = evum_switch:subscribe(S),
    {ok, A} = evm:create([{label, nem_ev}, {switch, S}, {timeout, ?BOOT}]),
    #{id := Port, mac := Mac} = port_of(S, A),
    ?assertEqual({port_up, Port, bess, Mac}, event(S)),
    ok = evum_switch:partition(S, [[A]]),
    ?assertEqual({partition, [[Port]]}, event(S)),
    ok = evum_switch:heal(S),
    ?assertEqual(heal, event(S)),
    ok = evum_switch:impair(S, A, #{loss => 0.5}),
    ?assertMatch({impair, {to, Port}, #{loss := 0.5}}, event(S)),
    ok = evum_switch:clear(S, A),
    ?assertEqual({clear, {to, Port}}, event(S)),
    %% A MAC seen on one attached port, then another: a move.
    {ok, P1} = evum_switch:attach(S),
    {ok, P2} = evum_switch:attach(S),
    [?assertMatch({port_up, P, attached, undefined}, event(S)) || P <- [P1, P2]],
    Moving = <<2, 16#ab, 0, 0, 0, 1>>,
    Frame = <<16#ffffffffffff:48, Moving/binary, 16#88b5:16, 0:(46 * 8)>>,
    ok = evum_switch:send(S, P1, Frame),
    ok = evum_switch:send(S, P2, Frame),
    ?assertEqual({mac_moved, Moving, P1, P2}, event(S)),
    ok = evm:stop(A),
    ?assertEqual({port_down, Port}, event(S)),
    ok = evum_switch:unsubscribe(S),
    evum_switch:stop(S),
    evum_tests:flush().

%% The next event of the switch's, skipping frames for this process's ports.
event(S) ->
    receive
        {evum_switch, S, Event} -> Event
    after 5000 -> error(no_event)
    end.

capture_to_process() ->
    {ok, S} = evum_switch:start([anonymous]),
    [A, B, C] = Vms = three(S),
    true = answers(A, "10.0.9.2"),
    {ok, Cap} = evum_switch:capture(S, A, {pid, self()}, [{max_frames, 6}]),
    {ok, 0, _} = evum:cmd(A, "ping -c 5 -i 0.2 10.0.9.2", 30000),
    {ok, #{frames := 6, missed := Missed}} = evum_switch:stop_capture(S, Cap),
    ?assert(Missed >= 4),
    Frames = [F || {evum_capture, Sw, _, F} <- evum_owner_tests:mailbox(), Sw =:= S],
    ?assertEqual(6, length(Frames)),
    %% The guest's wall clock, an hour on.
    {ok, 0, Before} = evum:cmd(B, "date +%s"),
    ok = evum:clock_jump(B, 3600),
    {ok, 0, After} = evum:cmd(B, "date +%s"),
    Jump = binary_to_integer(string:trim(After)) - binary_to_integer(string:trim(Before)),
    ?assert(Jump >= 3600 andalso Jump < 3610, Jump),
    ?assertEqual({error, {bad_option, {seconds, soon}}}, evum:clock_jump(B, soon)),
    [ok = evm:stop(Vm) || Vm <- [A, B, C]],
    evum_switch:stop(S),
    Vms.

rate() ->
    {ok, S} = evum_switch:start([anonymous]),
    [A, B, C] = Vms = three(S),
    true = answers(A, "10.0.9.2"),
    ok = evum_switch:impair(S, B, #{rate => 2000000}),
    {ok, 0, _} = evum:cmd(B, "nc -l -p 5001 -e dd of=/dev/null >/dev/null 2>&1 </dev/null &"),
    timer:sleep(300),
    %% 1 MiB from A to B; timed on the switch, from B's first frame of the
    %% stream to its last.
    {ok, 0, _} = evum:cmd(A, "nc 10.0.9.2 5001 -e dd if=/dev/zero bs=1k count=1024 >/dev/null 2>&1 </dev/null &"),
    {Secs, Bytes} = stream_time(S, B),
    Mbps = 1024 * 1024 * 8 / Secs / 1.0e6,
    ?debugFmt("guest TCP over a 2 Mbit/s link: ~.2f Mbit/s of payload (~b bytes of frames in ~.2f s)", [Mbps, Bytes, Secs]),
    %% Payload is 1448 of the 1514 bytes of a full frame: 1.91 Mbit/s at most.
    ?assert(Mbps > 1.8 andalso Mbps < 2.0, Mbps),
    [ok = evm:stop(Vm) || Vm <- [A, B, C]],
    evum_switch:stop(S),
    Vms.

%% The time from the first byte out to B's port until no more for 500 ms,
%% polled every 50 ms, and the bytes.
stream_time(S, Vm) ->
    #{bytes_out := B0} = port_of(S, Vm),
    T0 = wait_growth(S, Vm, B0),
    last_growth(S, Vm, T0, B0, T0).

wait_growth(S, Vm, B0) ->
    timer:sleep(50),
    case port_of(S, Vm) of
        #{bytes_out := B} when B > B0 -> erlang:monotonic_time(millisecond);
        _ -> wait_growth(S, Vm, B0)
    end.

last_growth(S, Vm, T0, Seen, LastAt) ->
    timer:sleep(50),
    Now = erlang:monotonic_time(millisecond),
    #{bytes_out := B} = port_of(S, Vm),
    if
        B > Seen -> last_growth(S, Vm, T0, B, Now);
        Now - LastAt > 500 -> {(LastAt - T0) / 1000, Seen};
        true -> last_growth(S, Vm, T0, Seen, LastAt)
    end.
