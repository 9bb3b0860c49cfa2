%% Guests that attack their switch, as a guest's root may: taking another
%% guest's MAC, claiming the gateway's address, flooding multicast. Each
%% attack is dropped and counted on the attacker's port, the BEAM's memory
%% stays flat, and the other guests keep talking.
-module(evum_port_security_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 60000).

-define(MNT, "/mnt/evum-test").

port_security_test_() ->
    {setup, fun setup/0, fun cleanup/1, fun(Dir) ->
        [
            {timeout, 180, {T, fun() -> ?MODULE:F(Dir) end}}
         || {T, F} <- [
                {"a guest forging another's MAC is not heard, the others talk on", mac_takeover},
                {"a guest claiming the gateway's address is not heard", gateway_spoof},
                {"a guest's MAC flood fills no more than its port's share", mac_flood},
                {"a guest's broadcast storm is cut to the limit, pings go on", broadcast_storm}
            ]
        ]
    end}.

%% The application, and rawframes (test/guest/rawframes.c) built into a
%% directory the guests mount.
setup() ->
    {ok, _} = application:ensure_all_started(evum),
    Name = io_lib:format("evum-port-security-tests-~s", [os:getpid()]),
    Dir = filename:join("/tmp", lists:flatten(Name)),
    ok = filelib:ensure_path(Dir),
    ok = file:change_mode(Dir, 8#755),
    Program = filename:join(Dir, "rawframes"),
    Cc = os:find_executable("gcc"),
    Port = open_port({spawn_executable, Cc}, [
        {args, ["-static", "-O2", "-o", Program, source("rawframes.c")]}, exit_status, stderr_to_stdout
    ]),
    receive
        {Port, {exit_status, 0}} -> Dir
    after 60000 -> error(no_rawframes)
    end.

cleanup(Dir) ->
    file:del_dir_r(Dir).

source(File) ->
    Candidates = [
        filename:join([filename:dirname(?FILE), "guest", File]),
        filename:absname(filename:join("test/guest", File))
    ],
    hd([C || C <- Candidates, filelib:is_regular(C)]).

%% A VM on Switch at Address, with the rawframes directory at ?MNT.
vm(Switch, Label, Address, Dir) ->
    {ok, Vm} = evm:create([{label, Label}, {switch, Switch}, {hostfs, Dir}, {timeout, ?BOOT}]),
    {ok, 0, _} = evum:cmd(Vm, ["ifconfig eth0 ", Address, " netmask 255.255.255.0 up"]),
    {ok, 0, _} = evum:cmd(Vm, "mkdir -p " ?MNT " && mount -t hostfs -o ro,/ none " ?MNT),
    Vm.

%% Runs rawframes in the guest: `{ok, Status, Output}'.
rawframes(Vm, Dst, Src, Count) ->
    evum:cmd(Vm, [?MNT "/rawframes eth0 ", Dst, " ", Src, " ", integer_to_list(Count)], 120000).

mac(Vm) ->
    {ok, 0, Mac} = evum:cmd(Vm, "cat /sys/class/net/eth0/address"),
    string:trim(Mac).

%% The counters of the port whose VM is `Vm'.
port_of(Switch, Vm) ->
    {ok, Ports} = evum_switch:ports(Switch),
    [Port] = [P || #{peer := Peer} = P <- Ports, Peer =:= Vm],
    Port.

rss_mb() ->
    {ok, Status} = file:read_file("/proc/" ++ os:getpid() ++ "/status"),
    {match, [Kb]} = re:run(Status, "VmRSS:\\s+(\\d+) kB", [{capture, all_but_first, list}]),
    list_to_integer(Kb) div 1024.

%% Pings from Vm to Address while Fun runs (in this process): `{ok, 0, _}'
%% when every ping was answered.
pinging(Vm, Address, Fun) ->
    Self = self(),
    Pinger = spawn_link(fun() -> Self ! {pinged, evum:cmd(Vm, ["ping -c 20 -i 0.1 -W 2 ", Address], 60000)} end),
    Result = Fun(),
    receive
        {pinged, Pinged} -> {Result, Pinged}
    after 60000 -> error({no_ping, Pinger})
    end.

stop_all(Switch, Vms) ->
    [ok = evm:stop(Vm) || Vm <- Vms],
    evum_switch:stop(Switch).

mac_takeover(Dir) ->
    {ok, S} = evum_switch:start([anonymous]),
    A = vm(S, ps_a, "10.0.0.1", Dir),
    B = vm(S, ps_b, "10.0.0.2", Dir),
    Thief = vm(S, ps_thief, "10.0.0.3", Dir),
    %% The thief sends from B's MAC, to A and to everyone, while A pings B.
    {Forged, Pinged} = pinging(A, "10.0.0.2", fun() ->
        [rawframes(Thief, Dst, mac(B), 20000) || Dst <- [mac(A), "ff:ff:ff:ff:ff:ff"]]
    end),
    ?assertMatch([{ok, 0, _}, {ok, 0, _}], Forged),
    ?assertMatch({ok, 0, _}, Pinged),
    %% Every forged frame was dropped at the thief's port, none reached A,
    %% and B's address stayed with B's port.
    ?assertMatch(#{drops_spoofed := 40000}, port_of(S, Thief)),
    #{frames_out := ToA} = port_of(S, A),
    ?assert(ToA < 1000, ToA),
    {ok, Table} = evum_switch:mac_table(S),
    #{id := BPort, mac := BMac} = port_of(S, B),
    ?assertEqual([BPort], [P || #{mac := M, port := P} <- Table, M =:= BMac]),
    stop_all(S, [A, B, Thief]).

gateway_spoof(Dir) ->
    {ok, S} = evum_switch:start([anonymous, {gateway, #{dns_forwarding => false}}]),
    A = vm(S, ps_ga, "10.0.2.15", Dir),
    Spoofer = vm(S, ps_gs, "10.0.2.16", Dir),
    %% The spoofer takes the gateway's address as its own and says so.
    {ok, _, _} = evum:cmd(Spoofer, "ip addr add 10.0.2.2/32 dev eth0 && arping -U -c 3 -I eth0 10.0.2.2", 30000),
    ?assert(maps:get(drops_guard, port_of(S, Spoofer)) >= 3),
    %% A's way out is still the gateway's.
    ?assertMatch({ok, 0, _}, evum:cmd(A, "ping -c 3 -W 2 10.0.2.2", 30000)),
    {ok, 0, Arp} = evum:cmd(A, "grep '^10.0.2.2 ' /proc/net/arp"),
    ?assertMatch({_, _}, binary:match(Arp, <<"52:55:0a:00:02:02">>), Arp),
    stop_all(S, [A, Spoofer]).

mac_flood(Dir) ->
    %% Without port security, as for a guest that bridges others behind it.
    {ok, S} = evum_switch:start([anonymous, {port_security, false}, {max_macs, 16}]),
    A = vm(S, ps_fa, "10.0.0.1", Dir),
    B = vm(S, ps_fb, "10.0.0.2", Dir),
    Flooder = vm(S, ps_flood, "10.0.0.3", Dir),
    Before = rss_mb(),
    {Flooded, Pinged} = pinging(A, "10.0.0.2", fun() -> rawframes(Flooder, mac(A), "random", 100000) end),
    ?assertMatch({ok, 0, _}, Flooded),
    ?assertMatch({ok, 0, _}, Pinged),
    %% (Its port is named after the last MAC it sent from: the busiest.)
    {ok, Ports} = evum_switch:ports(S),
    [#{id := Port, drops_mac_limit := Dropped} | _] = lists:reverse(lists:sort(
        fun(#{frames_in := X}, #{frames_in := Y}) -> X =< Y end, Ports
    )),
    {ok, Table} = evum_switch:mac_table(S),
    ?assert(length([E || #{port := P} = E <- Table, P =:= Port]) =< 16),
    ?assert(Dropped >= 100000 - 16, Dropped),
    ?assert(rss_mb() - Before < 20),
    stop_all(S, [A, B, Flooder]).

broadcast_storm(Dir) ->
    {ok, S} = evum_switch:start([anonymous, {storm_limit, 1000}]),
    A = vm(S, ps_sa, "10.0.0.1", Dir),
    B = vm(S, ps_sb, "10.0.0.2", Dir),
    Storm = vm(S, ps_storm, "10.0.0.3", Dir),
    Before = rss_mb(),
    Started = erlang:monotonic_time(millisecond),
    {Stormed, Pinged} = pinging(A, "10.0.0.2", fun() ->
        rawframes(Storm, "ff:ff:ff:ff:ff:ff", mac(Storm), 200000)
    end),
    Secs = (erlang:monotonic_time(millisecond) - Started) / 1000,
    ?assertMatch({ok, 0, _}, Stormed),
    ?assertMatch({ok, 0, _}, Pinged),
    #{drops_storm := Dropped} = port_of(S, Storm),
    %% What got through: the burst (a fifth of the limit) and the limit for
    %% the time the storm lasted.
    Passed = 200000 - Dropped,
    ?assert(Passed =< 200 + 1000 * Secs * 1.2, {Passed, Secs}),
    ?assert(rss_mb() - Before < 20),
    stop_all(S, [A, B, Storm]).
