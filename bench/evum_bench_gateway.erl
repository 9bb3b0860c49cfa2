%% @doc The gateway benchmark: TCP throughput from the host into a guest
%% through a port forward, evum's gateway against libslirp in Debian's
%% vde_plug on a vde_switch. See bench/README.md.
-module(evum_bench_gateway).

-export([run/1]).

-import(evum_bench_lib, [
    env_int/2, header/1, now_us/0, rounds/3, median/1, rate_line/2, figure/6, ratio/5, flush/0, kernel/0,
    debian_kernel/0, guest/2, guest_if/1, wait_listening/3, with_peer_switch/4, start_peer/4, stop_peer_switch/1,
    peer_ctl/1, netns/0, netns_tag/0
]).

%% The peer: libslirp as a vde plug (libvdeplug-slirp).
-define(VDE_PLUG, "/usr/bin/vde_plug").
-define(VDE_SLIRP_PLUGIN, "/usr/lib/x86_64-linux-gnu/vdeplug/libvdeplug_slirp.so").
-define(GW_GUEST_PORT, "7777").

%% TCP throughput from the host into a guest through a port forward: evum's
%% gateway (libslirp on a thread of evum's, a port of evum's switch) versus
%% libslirp in Debian's vde_plug (libvdeplug_slirp) on a vde_switch. The
%% guests are evum's busybox. The peer's guest needs UML's daemon
%% transport, which only Debian's 6.1 has, so the like-for-like comparison
%% runs there: evum's gateway with a guest over the daemon transport
%% (`evum_daemon', {net, user}) against the peer's, both booted with
%% {kernel, Debian's}. The benchmarks' kernel has no daemon transport: its
%% guest (`evum') joins the same network's switch over bess, and is held
%% against the same peer (a ratio across kernels). Where Debian's 6.1 does
%% not run, evum's figure is printed alone. The sender is this node
%% (gen_tcp to 127.0.0.1); the clock runs until the guest's receiver has
%% read everything and closed. No uplink is used: traffic is 127.0.0.1 to
%% our own guests only.
run(Tmp) ->
    Runs = env_int("EVUM_BENCH_GATEWAY_RUNS", 5),
    MB = env_int("EVUM_BENCH_GATEWAY_MB", 64),
    header(io_lib:format("gateway: ~b MiB from 127.0.0.1 into a guest through a port forward, ~b runs each, "
                         "alternating~s", [MB, Runs, netns_tag()])),
    Qlen = string:trim(os:cmd("cat /proc/sys/net/unix/max_dgram_qlen")),
    case netns() of
        "" ->
            io:format("host net.unix.max_dgram_qlen = ~s (left as it is: it limits every daemon-transport hop)~n",
                      [Qlen]);
        _ ->
            io:format("private network namespace (bench/run: unshare --net, only lo, up), its "
                      "net.unix.max_dgram_qlen = ~s (the host's is untouched)~n", [Qlen])
    end,
    [filelib:is_regular(F) orelse error({missing, F, "apt-get install vdeplug libvdeplug-slirp"})
     || F <- [?VDE_PLUG, ?VDE_SLIRP_PLUGIN]],
    {ok, _} = application:ensure_all_started(evum),
    Evum = bess_guest(evum_bench_gw_evum),
    try
        EPort = forward(evum, Evum),
        case debian_kernel() of
            {ok, Deb} ->
                peers(Tmp, Deb, #{evum => {Evum, EPort}}, Runs, MB);
            {skip, Why} ->
                io:format("left out: the peer (vde_plug slirp) and evum over the daemon transport, which need "
                          "Debian's 6.1: ~s~n", [Why]),
                gateway_runs(#{evum => {Evum, EPort}}, Runs, MB)
        end
    after
        catch evm:stop(Evum),
        flush()
    end.

%% evum's guest on the benchmarks' kernel: on the `user' network's switch
%% over bess, with the address evum_net leases it (evm:create/1's {net, user}
%% configures eth0, which a bess guest may not have).
bess_guest(Label) ->
    {ok, Switch} = evum_net:switch(user),
    Vm = guest(Label, [{switch, Switch}, {transport, bess}]),
    {ok, #{address := Addr, netmask := Mask}} = evum_net:lease(user, {label, Label}),
    If = guest_if(Vm),
    {ok, 0, _} = evum:cmd(Vm, ["ifconfig ", If, " ", Addr, " netmask ", Mask, " up"]),
    io:format("evum: a guest on the user network's switch over bess (~s ~s, kernel ~s)~n", [If, Addr, kernel()]),
    Vm.

forward(Kind, Vm) ->
    {ok, Port} = evum:forward(Vm, {tcp, 0, list_to_integer(?GW_GUEST_PORT)}),
    io:format("~s: evum:forward(Vm, {tcp, 0, ~s}) -> 127.0.0.1:~b~n", [Kind, ?GW_GUEST_PORT, Port]),
    Port.

%% The guests on Debian's 6.1: evum's over the daemon transport ({net,
%% user}), and the peer's on a vde_switch with the slirp plug.
peers(Tmp, Deb, Targets, Runs, MB) ->
    Daemon = guest(evum_bench_gw_daemon, [{kernel, Deb}, {net, user}]),
    try
        DPort = forward(evum_daemon, Daemon),
        with_peer_switch(vde_switch, Tmp, "vde-gw", fun(Vde) ->
            Peer = guest(evum_bench_gw_peer, [{kernel, Deb},
                                              {eth, 0, "daemon,02:ee:00:00:00:0f,unix," ++ peer_ctl(Vde)}]),
            try
                {ok, 0, _} = evum:cmd(Peer, "ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up"),
                with_slirp_plug(Vde, fun(PPort) ->
                    gateway_runs(Targets#{evum_daemon => {Daemon, DPort}, vde_slirp => {Peer, PPort}}, Runs, MB)
                end)
            after
                catch evm:stop(Peer)
            end
        end)
    after
        catch evm:stop(Daemon)
    end.

%% Targets: #{Kind => {Vm, HostPort}}.
gateway_runs(Targets, Runs, MB) ->
    Kinds = [K || K <- [evum, evum_daemon, vde_slirp], maps:is_key(K, Targets)],
    Run = fun(Kind, I, Mb) ->
        {Vm, Port} = maps:get(Kind, Targets),
        gateway_run(Kind, Vm, Port, Mb, I)
    end,
    %% Unmeasured: ARP, the first connection through each forward.
    [Run(Kind, 0, 1) || Kind <- Kinds],
    Results = rounds(Kinds, Runs, fun(Kind, I) -> Run(Kind, I, MB) end),
    io:format("~n"),
    [rate_line(io_lib:format("~s: Mbit/s to the guest", [What]), maps:get(Kind, Results))
     || {Kind, What} <- [{evum, "evum, bess"}, {evum_daemon, "evum, daemon (6.1)"},
                         {vde_slirp, "vde_plug slirp (6.1)"}],
        maps:is_key(Kind, Results)],
    io:format("~n"),
    Tag = netns_tag(),
    Med = fun(Kind) -> median(maps:get(Kind, Results)) end,
    K = kernel(),
    case maps:is_key(vde_slirp, Results) of
        true ->
            {ok, Deb} = debian_kernel(),
            figure("gateway evum host-to-guest TCP, daemon guest (vde_plug slirp's)" ++ Tag, Med(evum_daemon),
                   "Mbit/s", '>=', round(Med(vde_slirp)), [Deb]),
            ratio("gateway TCP Mbit/s evum/vde_plug slirp (median, both daemon guests)" ++ Tag,
                  Med(evum_daemon) / Med(vde_slirp), '>=', 1.0, [Deb]),
            figure("gateway evum host-to-guest TCP, bess guest (vde_plug slirp's)" ++ Tag, Med(evum), "Mbit/s",
                   '>=', round(Med(vde_slirp)), [K]),
            ratio("gateway TCP Mbit/s evum bess guest/vde_plug slirp (median)" ++ Tag, Med(evum) / Med(vde_slirp),
                  '>=', 1.0, [K, Deb]);
        false ->
            io:format("gateway evum host-to-guest TCP, bess guest: median ~.1f Mbit/s ~s (no peer: left out above)~n",
                      [Med(evum), evum_bench_lib:on_tag([K])])
    end,
    ok.

%% One transfer: the guest listens (`nc -e dd', detached), this node connects
%% to the forward, sends MB MiB in 64 KiB writes and shuts its side down; the
%% time runs from the connect until the guest's dd has read everything and
%% exited (its close reaches us as the end of the connection). dd's count of
%% full 64 KiB blocks checks that everything arrived.
gateway_run(Kind, Vm, HostPort, MB, I) ->
    {ok, 0, _} = evum:cmd(Vm, ["setsid nc -l -p ", ?GW_GUEST_PORT, " -e sh -c "
                               "'dd of=/dev/null bs=64k iflag=fullblock 2>/tmp/dd.log' </dev/null >/dev/null 2>&1 &"]),
    ok = wait_listening(Vm, ?GW_GUEST_PORT, 50),
    Chunk = binary:copy(<<0>>, 65536),
    T0 = now_us(),
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, HostPort, [binary, {active, false}], 10000),
    End =
        try
            [ok = gen_tcp:send(S, Chunk) || _ <- lists:seq(1, 16 * MB)],
            ok = gen_tcp:shutdown(S, write),
            %% The peer at the host's qlen has taken 30 s for 64 MiB.
            gen_tcp:recv(S, 0, max(120000, 5000 * MB))
        after
            gen_tcp:close(S)
        end,
    Secs = (now_us() - T0) / 1.0e6,
    {ok, 0, Log} = evum:cmd(Vm, "cat /tmp/dd.log"),
    Blocks = integer_to_binary(16 * MB),
    case {End, binary:match(Log, <<Blocks/binary, "+0 records in">>)} of
        {{error, Closed}, {_, _}} when Closed =:= closed; Closed =:= econnreset -> ok;
        _ -> error({gateway_transfer_incomplete, Kind, End, Log})
    end,
    Mbps = MB * 8 * 1.048576 / Secs,
    I > 0 andalso io:format("  run ~b ~-11s ~b MiB in ~.3f s = ~.1f Mbit/s~n", [I, Kind, MB, Secs, Mbps]),
    Mbps.

%% libslirp as a port of the vde_switch: `vde_plug vde://DIR slirp://...'
%% with a forward 127.0.0.1:HostPort -> 10.0.2.15:7777 (IPv4 only), in its
%% own process group, listed in switch-pgids under the switch's directory
%% (its command line names it) for bench/run's sweep.
with_slirp_plug(#{dir := Dir}, Fun) ->
    HostPort = free_port(),
    Slirp = lists:flatten(io_lib:format("slirp:///v4/tcpfwd=127.0.0.1:~b:10.0.2.15:~s", [HostPort, ?GW_GUEST_PORT])),
    Plug = start_peer(vde_slirp, "exec " ?VDE_PLUG " \"vde://$1\" \"$2\" </dev/null 2>/dev/null", [Dir, Slirp], Dir),
    try
        wait_host_listening(Plug, HostPort, 5000),
        io:format("vde_slirp: pid ~b, ~s ~s on ~s~n", [maps:get(pgid, Plug), ?VDE_PLUG, "vde://" ++ Dir, Slirp]),
        Fun(HostPort)
    after
        stop_peer_switch(Plug)
    end.

%% A port of 127.0.0.1 that was free a moment ago.
free_port() ->
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(L),
    ok = gen_tcp:close(L),
    Port.

%% Waits until something listens on 127.0.0.1:Port (/proc/net/tcp, state 0A).
wait_host_listening(#{port := P, kind := Kind} = Peer, Port, Ms) ->
    {ok, Tcp} = file:read_file("/proc/net/tcp"),
    Local = list_to_binary(io_lib:format("0100007F:~4.16.0B 00000000:0000 0A", [Port])),
    case binary:match(Tcp, Local) of
        {_, _} -> ok;
        nomatch when Ms =< 0 -> error({not_listening, Kind, Port});
        nomatch ->
            receive
                {P, {exit_status, St}} -> error({peer_exited, Kind, St})
            after 20 -> wait_host_listening(Peer, Port, Ms - 20)
            end
    end.
