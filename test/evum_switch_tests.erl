%% The switch with real guests: VMs ping each other through it, and an
%% Erlang process attached to it answers a guest's ARP and ping itself.
-module(evum_switch_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 60000).

switch_test_() ->
    {setup, fun() -> {ok, _} = application:ensure_all_started(evum) end, fun(_) -> ok end, [
        {timeout, 120, {T, fun() -> ?MODULE:F() end}}
     || {T, F} <- [
            {"three VMs on one switch ping each other", three_vms},
            {"a guest that takes its interface down and up is back on the switch", down_and_up},
            {"an Erlang process answers a guest's ARP and ping", erlang_port},
            {"a bess VM and a daemon VM (Debian's 6.1 kernel) on one switch", bess},
            {"named networks hand out the original config's addresses", named_networks},
            {"the original README's Using the Host OS session", host_os_session},
            {"garbage and a flood at a live switch: counted, pings keep flowing", garbage},
            {"sniffed frames read as tcpdump would print them", describe_frames},
            {"the switch's sockets go with it", cleanup},
            {"a switch's thread runs on the CPU its cpu option names, busy-polling or not", pinned}
        ]
    ]}.

vm(Switch, Label, Address) ->
    {ok, Vm} = evm:create([{label, Label}, {switch, Switch}, {timeout, ?BOOT}]),
    {ok, 0, _} = evum:cmd(Vm, ["ifconfig eth0 ", Address, " netmask 255.255.255.0 up"]),
    Vm.

three_vms() ->
    {ok, S} = evum_switch:start([{name, sw_three}]),
    Vms = [vm(S, L, A) || {L, A} <- [{sw1, "10.0.0.1"}, {sw2, "10.0.0.2"}, {sw3, "10.0.0.3"}]],
    [
        ?assertMatch({ok, 0, _}, evum:cmd(Vm, ["ping -c 1 -W 3 ", Peer]))
     || Vm <- Vms, Peer <- ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    ],
    {ok, Ports} = evum_switch:ports(S),
    ?assertEqual(3, length([P || #{kind := bess} = P <- Ports])),
    %% Each port names its VM.
    ?assertEqual(lists:sort(Vms), lists:sort([Peer || #{peer := Peer} <- Ports])),
    ?assert(lists:all(fun(#{frames_in := In, frames_out := Out}) -> In > 0 andalso Out > 0 end, Ports)),
    {ok, Table} = evum_switch:mac_table(S),
    ?assertEqual(3, length(Table)),
    %% The MAC comes from the label: the same after a restart.
    {ok, 0, Mac1} = evum:cmd(sw1, "cat /sys/class/net/eth0/address"),
    [ok = evm:stop(Vm) || Vm <- Vms],
    timer:sleep(200),
    ?assertEqual({ok, []}, evum_switch:ports(S)),
    Again = vm(S, sw1, "10.0.0.1"),
    ?assertEqual({ok, 0, Mac1}, evum:cmd(Again, "cat /sys/class/net/eth0/address")),
    ok = evm:stop(Again),
    evum_switch:stop(S).

down_and_up() ->
    {ok, S} = evum_switch:start([{name, sw_down_up}]),
    [A, B] = [vm(S, L, Addr) || {L, Addr} <- [{swdu1, "10.0.0.1"}, {swdu2, "10.0.0.2"}]],
    ?assertMatch({ok, 0, _}, evum:cmd(A, "ping -c 1 -W 3 10.0.0.2")),
    %% Each open of the interface binds its end's name again.
    [
        begin
            ?assertMatch({ok, 0, _}, evum:cmd(A, "ifconfig eth0 down && ifconfig eth0 up")),
            ?assertMatch({ok, 0, _}, evum:cmd(A, "ping -c 1 -W 3 10.0.0.2")),
            ?assertMatch({ok, 0, _}, evum:cmd(B, "ping -c 1 -W 3 10.0.0.1"))
        end
     || _ <- [1, 2]
    ],
    %% The closed connections' ports are gone: one port per VM.
    {ok, Ports} = evum_switch:ports(S),
    ?assertEqual(lists:sort([A, B]), lists:sort([Peer || #{peer := Peer} <- Ports])),
    [ok = evm:stop(Vm) || Vm <- [A, B]],
    evum_switch:stop(S).

%% As bytes, to stand in binaries and in binary patterns alike.
named_networks() ->
    {ok, A} = evm:create([{label, net_a}, {net, home}, {timeout, ?BOOT}]),
    {ok, B} = evm:create([{location, home}, {timeout, ?BOOT}]),
    ?assertEqual({ok, 0, <<"192.168.213.92\n">>}, address(A)),
    ?assertEqual({ok, 0, <<"192.168.213.93\n">>}, address(B)),
    ?assertMatch({ok, 0, _}, evum:cmd(A, "ping -c 1 -W 3 192.168.213.93")),
    ?assertMatch({ok, 0, <<"default via 192.168.213.1", _/binary>>}, evum:cmd(B, "ip route | grep default")),
    ?assertEqual({error, {unknown_network, mars}}, evm:create([{net, mars}])),
    %% An unlabelled VM's address is free again when it ends; a label keeps its own.
    ok = evm:stop(B),
    timer:sleep(100),
    {ok, C} = evm:create([{net, home}, {timeout, ?BOOT}]),
    ?assertEqual({ok, 0, <<"192.168.213.93\n">>}, address(C)),
    ok = evm:stop(A),
    {ok, A2} = evm:create([{label, net_a}, {net, home}, {timeout, ?BOOT}]),
    ?assertEqual({ok, 0, <<"192.168.213.92\n">>}, address(A2)),
    [ok = evm:stop(Vm) || Vm <- [C, A2]].

address(Vm) ->
    evum:cmd(Vm, "ip -4 -o addr show eth0 | sed 's/.*inet \\([0-9.]*\\).*/\\1/'").

%% Guests join over bess by default; the daemon transport is for kernels up
%% to 6.15, such as Debian's 6.1, where that kernel runs on this host.
bess() ->
    {ok, S} = evum_switch:start([{name, sw_bess}]),
    Bess = vm(S, sw_bess_vm, "10.0.0.2"),
    Daemon = evm:create([
        {label, sw_daemon}, {switch, S}, {transport, daemon}, {kernel, "/usr/bin/linux"}, {timeout, ?BOOT}
    ]),
    case Daemon of
        {ok, D} ->
            {ok, 0, _} = evum:cmd(D, "ifconfig eth0 10.0.0.1 netmask 255.255.255.0 up"),
            ?assertMatch({ok, 0, _}, evum:cmd(Bess, "ping -c 2 -W 3 10.0.0.1")),
            ?assertMatch({ok, 0, _}, evum:cmd(D, "ping -c 2 -W 3 10.0.0.2")),
            {ok, Ports} = evum_switch:ports(S),
            ?assertEqual([bess, daemon], lists:sort([K || #{kind := K} <- Ports])),
            ok = evm:stop(D);
        {error, Why} ->
            io:format(user, "~nskipped the daemon VM: Debian's 6.1 UML does not run here (~0p)~n", [Why])
    end,
    %% Its own end of the connection lives in its runtime directory (for a
    %% jailed VM, a tmpfs in its own mount namespace, which holds UML's
    %% directory: seen through its root).
    #{runtime_dir := Dir, os_pid := OsPid, umid := Umid} = evum:info(Bess),
    Seen =
        case evum_nif:effective_uid() of
            0 -> filename:join(["/proc/" ++ integer_to_list(OsPid) ++ "/root" ++ binary_to_list(Dir), Umid]);
            _ -> Dir
        end,
    %% It is named after the VM's MAC, which the switch locks its port to.
    {ok, 0, Mac} = evum:cmd(Bess, "cat /sys/class/net/eth0/address"),
    Name = "bess-" ++ string:replace(string:trim(binary_to_list(Mac)), ":", "", all),
    ?assertMatch({ok, _}, file:read_link_info(filename:join(Seen, Name))),
    ?assertEqual({error, {bad_option, {transport, carrier_pigeon}}},
                 evm:create([{switch, S}, {transport, carrier_pigeon}])),
    ok = evm:stop(Bess),
    ?assertNot(filelib:is_dir(Dir)),
    evum_switch:stop(S).

-define(MY_MAC, 2, 16#ee, 0, 0, 0, 16#99).
-define(MY_IP, 10, 0, 0, 99).

erlang_port() ->
    {ok, S} = evum_switch:start([{name, sw_erlang}]),
    Vm = vm(S, sw_guest, "10.0.0.1"),
    Self = self(),
    Responder = spawn_link(fun() ->
        {ok, _Port} = evum_switch:attach(S, [{mac, <<?MY_MAC>>}]),
        Self ! attached,
        respond(S, 0)
    end),
    receive attached -> ok end,
    {ok, Ports} = evum_switch:ports(S),
    ?assertMatch([#{peer := Responder, mac := <<?MY_MAC>>}], [P || #{kind := attached} = P <- Ports]),
    ?assertMatch({ok, 0, _}, evum:cmd(Vm, "ping -c 3 -W 3 10.0.0.99")),
    Responder ! {count, self()},
    Answered = receive {answered, N} -> N end,
    ?assert(Answered >= 4),
    {ok, 0, Neigh} = evum:cmd(Vm, "cat /proc/net/arp"),
    ?assertMatch({_, _}, binary:match(Neigh, <<"02:ee:00:00:00:99">>)),
    ok = evm:stop(Vm),
    unlink(Responder),
    exit(Responder, kill),
    evum_switch:stop(S).

%% A tiny host at 10.0.0.99: answers ARP requests and ICMP echo requests.
respond(S, Answered) ->
    receive
        {evum_frame, _, _Port, Frame} ->
            case answer(Frame) of
                none ->
                    respond(S, Answered);
                Reply ->
                    ok = evum_switch:send(S, Reply),
                    respond(S, Answered + 1)
            end;
        {count, From} ->
            From ! {answered, Answered},
            respond(S, Answered)
    end.

answer(<<_:6/binary, Src:6/binary, 16#0806:16, 1:16, 16#0800:16, 6, 4, 1:16, Sha:6/binary, Spa:4/binary,
         _Tha:6/binary, ?MY_IP, _/binary>>) ->
    _ = Src,
    <<Sha/binary, ?MY_MAC, 16#0806:16, 1:16, 16#0800:16, 6, 4, 2:16, ?MY_MAC, ?MY_IP,
      Sha/binary, Spa/binary>>;
answer(<<?MY_MAC, Src:6/binary, 16#0800:16, 4:4, 5:4, Tos, _Len:16, Id:16, FlagsFrag:16, _Ttl, 1, _Sum:16,
         From:4/binary, ?MY_IP, 8, 0, _IcmpSum:16, Rest/binary>>) ->
    Icmp0 = <<0, 0, 0:16, Rest/binary>>,
    Icmp = <<0, 0, (checksum(Icmp0)):16, Rest/binary>>,
    Len = 20 + byte_size(Icmp),
    Header0 = <<4:4, 5:4, Tos, Len:16, Id:16, FlagsFrag:16, 64, 1, 0:16, ?MY_IP, From/binary>>,
    <<_:10/binary, Tail/binary>> = Header0,
    Header = <<(binary:part(Header0, 0, 10))/binary, (checksum(Header0)):16, (binary:part(Tail, 2, 8))/binary>>,
    <<Src/binary, ?MY_MAC, 16#0800:16, Header/binary, Icmp/binary>>;
answer(_) ->
    none.

%% The Internet checksum: the ones' complement of the ones' complement sum.
checksum(Bin) ->
    Padded =
        case byte_size(Bin) rem 2 of
            0 -> Bin;
            1 -> <<Bin/binary, 0>>
        end,
    Sum = lists:sum([W || <<W:16>> <= Padded]),
    Folded = fold(Sum),
    (bnot Folded) band 16#ffff.

fold(Sum) when Sum > 16#ffff -> fold((Sum band 16#ffff) + (Sum bsr 16));
fold(Sum) -> Sum.

describe_frames() ->
    Arp = <<255, 255, 255, 255, 255, 255, 2, 238, 0, 0, 0, 1, 16#0806:16, 1:16, 16#0800:16, 6, 4, 1:16,
            2, 238, 0, 0, 0, 1, 10, 0, 0, 1, 0:48, 10, 0, 0, 2>>,
    ?assertEqual("02:ee:00:00:00:01 > ff:ff:ff:ff:ff:ff, ARP who-has 10.0.0.2 tell 10.0.0.1, 42 bytes",
                 lists:flatten(io_lib:format("~s", [evum_sniff:describe(Arp)]))),
    Ping = <<2, 238, 0, 0, 0, 2, 2, 238, 0, 0, 0, 1, 16#0800:16, 4:4, 5:4, 0, 84:16, 0:32, 64, 1, 0:16,
             10, 0, 0, 1, 10, 0, 0, 2, 8, 0, 0:16, 0:32>>,
    ?assertMatch({match, _}, re:run(lists:flatten(io_lib:format("~s", [evum_sniff:describe(Ping)])),
                                    "IPv4 10.0.0.1 > 10.0.0.2: ICMP echo request")),
    ?assertEqual("runt of 3 bytes", lists:flatten(evum_sniff:describe(<<1, 2, 3>>))).

cleanup() ->
    {ok, S} = evum_switch:start([{name, sw_cleanup}]),
    Ctl = evum_switch:control_socket(S),
    Dir = filename:dirname(Ctl),
    ?assertMatch({ok, _}, file:read_link_info(Ctl)),
    %% Gone when stop/1 returns: a BEAM that exits right after leaves nothing.
    evum_switch:stop(S),
    ?assertEqual({error, enoent}, file:read_link_info(Ctl)),
    ?assertNot(filelib:is_dir(Dir)).

pinned() ->
    Cpu = lists:last(evum_tests:own_cpus()),
    Before = switch_threads_on([Cpu]),
    %% And one that never busy-polls: the guests ping just the same.
    {ok, S} = evum_switch:start([{name, sw_pinned}, {cpu, Cpu}, {busy_poll, 0}]),
    ?assertEqual(Before + 1, switch_threads_on([Cpu])),
    Vms = [vm(S, L, A) || {L, A} <- [{sw_pin1, "10.0.0.1"}, {sw_pin2, "10.0.0.2"}]],
    ?assertMatch({ok, 0, _}, evum:cmd(hd(Vms), "ping -c 2 -W 3 10.0.0.2")),
    [ok = evm:stop(Vm) || Vm <- Vms],
    evum_switch:stop(S),
    ?assertEqual(Before, switch_threads_on([Cpu])),
    {error, {bad_option, Why}} = evum_switch:start([anonymous, {cpu, 100000}]),
    ?assertMatch({match, _}, re:run(Why, "CPU 100000 is not one evum may run on")),
    ?assertEqual({error, {bad_option, {cpu, fast}}}, evum_switch:start([anonymous, {cpu, fast}])),
    ?assertEqual({error, {bad_option, {cpu, [0, -1]}}}, evum_switch:start([anonymous, {cpu, [0, -1]}])),
    ?assertEqual({error, {bad_option, {mtu, 9000}}}, evum_switch:start([anonymous, {mtu, 9000}])),
    [?assertEqual({error, {bad_option, {busy_poll, Us}}}, evum_switch:start([anonymous, {busy_poll, Us}]))
     || Us <- [-1, 1001, 2.5, fast]].

%% How many switch threads of this BEAM may run only on `Cpus'.
switch_threads_on(Cpus) ->
    Tasks = filelib:wildcard("/proc/self/task/*"),
    length([T || T <- Tasks, file:read_file(T ++ "/comm") =:= {ok, <<"evum-switch\n">>},
                 evum_tests:cpus_allowed(T) =:= Cpus]).

%% The original README's "Using the Host OS" session, on an isolated switch
%% (addresses of its own, no uplink).
host_os_session() ->
    {ok, Switch} = evum_switch:start([{name, sw_host_os}]),
    {ok, _} = evum_ctl:start(Switch),
    {ok, R} = evum:start(),
    {ok, R1} = evum:start(),
    {ok, R2} = evum:start(),
    Vms = [R, R1, R2],
    Addresses = ["10.0.213.92", "10.0.213.93", "10.0.213.94"],
    [ok = evum:ifconfig(Vm, {A, "255.255.255.0", "10.0.213.1"}) || {Vm, A} <- lists:zip(Vms, Addresses)],
    timer:sleep(1000),
    evum_tests:flush(),
    ?assertMatch(<<_/binary>>, evum:send(R, "ifconfig -a")),
    wait_line_matching(<<"10.0.213.92">>),
    {ok, Sniffer} = evum:sniff(Switch),
    ok = evum:ping(R, {10, 0, 213, 93}),
    wait_line_matching(<<"1 packets transmitted, 1 ">>),
    exit(Sniffer, kill),
    %% Each pings the others.
    [?assertMatch({ok, 0, _}, evum:cmd(Vm, ["ping -c 1 -W 3 ", A])) || Vm <- Vms, A <- Addresses],
    ok = evum_ctl:stop(),
    [ok = evm:stop(Vm) || Vm <- Vms],
    evum_switch:stop(Switch),
    evum_tests:flush().

wait_line_matching(Part) ->
    receive
        Line when is_binary(Line) ->
            case binary:match(Line, Part) of
                nomatch -> wait_line_matching(Part);
                _ -> ok
            end
    after 10000 -> error({no_line_with, Part})
    end.

%% Every kind of bad input at a switch on which two guests ping each other,
%% and a client that floods the switch all the while.
garbage() ->
    {ok, S} = evum_switch:start([{name, sw_garbage}]),
    A = vm(S, sw_ga, "10.0.0.1"),
    _B = vm(S, sw_gb, "10.0.0.2"),
    Ctl = evum_switch:control_socket(S),
    Self = self(),
    spawn_link(fun() -> Self ! {pinged, evum:cmd(A, "ping -c 25 -i 0.2 -W 2 10.0.0.2", 60000)} end),
    timer:sleep(500),
    %% (Connected first: the silent clients below take every pending slot.)
    {Client, Control, Port} = daemon_client(Ctl, <<"evum-garbage-client">>),
    Requests = [
        request(<<16#deadbeef:32/native, 3:32/native, 0:32/native>>),
        request(<<16#feedface:32/native, 2:32/native, 0:32/native>>),
        request(<<16#feedface:32/native, 3:32/native, 7:32/native>>),
        binary:copy(<<16#feedface:32/native>>, 2000)
    ],
    [send_and_close(Ctl, R) || R <- Requests],
    %% Half a request, then gone.
    {ok, Short} = gen_tcp:connect({local, Ctl}, 0, [binary, {active, false}]),
    ok = gen_tcp:send(Short, <<16#feedface:32/native>>),
    ok = gen_tcp:close(Short),
    %% Clients that connect and never speak, more than may wait at once.
    Silent = [C || {ok, C} <- [gen_tcp:connect({local, Ctl}, 0, [binary, {active, false}]) || _ <- lists:seq(1, 100)]],
    %% A client of its own: runt and oversized datagrams from it are
    %% dropped; a socket that is not its may not send to its port at all.
    [ok = socket:sendto(Client, F, Port) || F <- [<<>>, <<1, 2, 3>>, binary:copy(<<0>>, 13), binary:copy(<<0>>, 3000)]],
    {ok, Stranger} = socket:open(local, dgram, default),
    ?assertEqual({error, eperm}, socket:sendto(Stranger, binary:copy(<<255>>, 60), Port)),
    socket:close(Stranger),
    %% Then it floods the switch with frames to its own MAC (learned from
    %% the first, then dropped), as fast as its socket takes them.
    Own = <<2, 16#ee, 0, 0, 0, 16#99>>,
    Flood = <<Own/binary, Own/binary, 16#88b5:16, 0:(46 * 8)>>,
    Flooder = spawn_link(fun() -> flood(Client, Port, Flood) end),
    {ok, 0, Out} = receive {pinged, P} -> P after 60000 -> error(no_ping) end,
    unlink(Flooder),
    exit(Flooder, kill),
    ?assertMatch({_, _}, binary:match(Out, <<"25 packets received">>), Out),
    {ok, C} = evum_switch:counters(S),
    [?assert(maps:get(K, C) >= 1, {K, C}) || K <- [bad_magic, bad_version, bad_type, short_request, oversized_request]],
    ?assertMatch(#{runt := 3, oversized_frame := 1}, C),
    ?assert(maps:get(too_many_pending, C) + maps:get(request_timeout, C) >= 1, C),
    %% The flood was real: many thousands of frames while the guests pinged.
    {ok, Ports} = evum_switch:ports(S),
    [Flooded] = [In || #{mac := M, frames_in := In} <- Ports, M =:= Own],
    ?assert(Flooded > 10000, Flooded),
    gen_tcp:close(Control),
    socket:close(Client),
    [gen_tcp:close(Sock) || Sock <- Silent],
    [ok = evm:stop(Vm) || Vm <- [sw_ga, sw_gb]],
    evum_switch:stop(S).

%% A client of the daemon transport, as UML's driver is: a datagram socket
%% bound to an abstract name with the whole 108 bytes of sun_path, announced
%% in a request on the control socket. Returns the socket, the control
%% connection (the port lives while it is open) and the address of the
%% port's socket on the switch, from the reply.
daemon_client(Ctl, Name) ->
    {ok, Sock} = socket:open(local, dgram, default),
    Path = sun_path(<<0, Name/binary>>),
    ok = socket:bind(Sock, #{family => local, path => Path}),
    {ok, Control} = gen_tcp:connect({local, Ctl}, 0, [binary, {active, false}]),
    ok = gen_tcp:send(Control, request(<<16#feedface:32/native, 3:32/native, 0:32/native, 1:16/native, Path/binary>>)),
    {ok, <<1:16/native, Reply:108/binary>>} = gen_tcp:recv(Control, 110, 5000),
    {Sock, Control, #{family => local, path => Reply}}.

sun_path(Name) -> <<Name/binary, 0:((108 - byte_size(Name)) * 8)>>.

%% struct request_v3 is 124 bytes with its padding.
request(Bin) -> <<Bin/binary, 0:((124 - byte_size(Bin)) * 8)>>.

flood(Sock, To, Frame) ->
    ok = socket:sendto(Sock, Frame, To),
    flood(Sock, To, Frame).

send_and_close(Path, Bytes) ->
    {ok, Sock} = gen_tcp:connect({local, Path}, 0, [binary, {active, false}]),
    gen_tcp:send(Sock, Bytes),
    %% The switch closes on garbage: nothing comes back.
    ?assertMatch({error, _}, gen_tcp:recv(Sock, 110, 6000)),
    gen_tcp:close(Sock).
