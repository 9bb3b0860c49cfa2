%% The gateway as a user meets it: VMs on a network with evum's gateway get
%% their addresses, are reached from the host through port forwards on the
%% loopback, and reach the host's loopback only when allowed. All traffic
%% stays on this machine: 127.0.0.1 and our own guests.
-module(evum_gateway_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 30000).

gateway_test_() ->
    {setup, fun setup/0, fun cleanup/1, fun(Dir) ->
        [
            {timeout, 120, {T, fun() -> ?MODULE:F(Dir) end}}
         || {T, F} <- [
                {"the original's shell on port 7777, reached from the host with nc", shell_on_a_port},
                {"forwards: listed with counters, removed, gone with their VM", forward_lifecycle},
                {"a guest configures itself by DHCP", dhcp},
                {"the host's loopback: closed by default, open by option", host_loopback},
                {"bad forwards are errors", bad_forwards}
            ]
        ]
    end}.

setup() ->
    Dir = string:trim(os:cmd("mktemp -d /tmp/evum-gateway-test-XXXXXX")),
    Old = application:get_env(evum, config),
    application:load(evum),
    %% A second user network whose guests may reach the host's loopback.
    Config = filename:join(Dir, "evm.toml"),
    ok = file:write_file(Config, [
        "[network.devnet]\nbase_ip = \"10.0.9.\"\nfirst_ip = 15\nnetmask = \"255.255.255.0\"\n"
        "gw = \"10.0.9.2\"\ngateway = true\nhost_loopback = true\n"
    ]),
    application:set_env(evum, config, Config),
    {ok, _} = application:ensure_all_started(evum),
    {Dir, Old}.

cleanup({Dir, Old}) ->
    case Old of
        {ok, V} -> application:set_env(evum, config, V);
        undefined -> application:unset_env(evum, config)
    end,
    os:cmd("rm -rf " ++ Dir).

create(Options) ->
    {ok, Vm} = evm:create([{timeout, ?BOOT} | Options]),
    Vm.

%% Starts a listener in the guest, detached from the command channel.
listen(Vm, Command) ->
    {ok, 0, _} = evum:cmd(Vm, ["setsid ", Command, " </dev/null >/dev/null 2>&1 &"]),
    %% Until it is listening.
    {ok, 0, _} = evum:cmd(Vm, "for i in 1 2 3 4 5 6 7 8 9 10; do netstat -lnt | grep -q ':7777 ' && break; sleep 0.2; done").

%%% Tests

shell_on_a_port(_) ->
    Vm = create([{label, gw_shell}, {net, user}]),
    ?assertEqual({ok, 0, <<"10.0.2.15\n">>}, evum:cmd(Vm, "ifconfig eth0 | grep -o 'addr:10[0-9.]*' | cut -d: -f2")),
    %% Its resolver is the gateway's DNS, as the gateway's DHCP would say.
    ?assertEqual({ok, 0, <<"nameserver 10.0.2.3\n">>}, evum:cmd(Vm, "cat /etc/resolv.conf")),
    %% The original ran socat in the guest; busybox's nc does the same.
    listen(Vm, "nc -ll -p 7777 -e /bin/sh"),
    {ok, Port} = evum:forward(Vm, {tcp, 0, 7777}),
    Output = os:cmd(
        "echo 'cat /proc/cpuinfo' | busybox nc -w 3 127.0.0.1 " ++ integer_to_list(Port) ++ " 2>&1"
    ),
    ?assertNotEqual(nomatch, string:find(Output, "User Mode Linux"), Output),
    ok = evm:stop(Vm).

forward_lifecycle(_) ->
    Vm = create([{label, gw_echo}, {net, user}]),
    listen(Vm, "nc -ll -p 7777 -e cat"),
    {ok, Port} = evum:forward(Vm, {tcp, 0, 7777}),
    Payload = binary:copy(<<"0123456789abcdef">>, 1024),
    {ok, Sock} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(Sock, Payload),
    ?assertEqual({ok, Payload}, gen_tcp:recv(Sock, byte_size(Payload), 10000)),
    ok = gen_tcp:close(Sock),
    {ok, [Forward]} = evum:forwards(Vm),
    ?assertMatch(
        #{proto := tcp, host_addr := <<"127.0.0.1">>, host_port := Port, guest_addr := <<"10.0.2.", _/binary>>,
          guest_port := 7777, connections := 1},
        Forward
    ),
    #{bytes_to_guest := In, bytes_from_guest := Out} = Forward,
    ?assertEqual({16384, 16384}, {In, Out}),
    %% The forward listens on the loopback only.
    [?assertMatch({error, _}, gen_tcp:connect(Addr, Port, [], 2000)) || Addr <- other_local_addresses()],
    %% NAT flows are visible per flow on the network's switch.
    #{switch := Switch} = evum:info(Vm),
    {ok, #{flows := Flows}} = evum_switch:gateway_counters(Switch),
    ?assert(lists:any(fun(#{origin := O}) -> O =/= guest end, Flows)),
    ok = evum:unforward(Vm, {tcp, Port}),
    ?assertEqual({ok, []}, evum:forwards(Vm)),
    ?assertEqual({error, econnrefused}, gen_tcp:connect({127, 0, 0, 1}, Port, [], 2000)),
    %% A forward goes with its VM.
    {ok, Port2} = evum:forward(Vm, {tcp, 0, 7777}),
    ok = evm:stop(Vm),
    ?assert(wait_until(fun() -> gen_tcp:connect({127, 0, 0, 1}, Port2, [], 1000) =:= {error, econnrefused} end)).

dhcp(_) ->
    {ok, Switch} = evum_switch:start([anonymous, gateway]),
    Vm = create([{switch, Switch}]),
    {ok, 0, _} = evum:cmd(Vm, "ifconfig eth0 up && udhcpc -i eth0 -n -q -t 5"),
    ?assertEqual({ok, 0, <<"10.0.2.15\n">>}, evum:cmd(Vm, "ifconfig eth0 | grep -o 'addr:10[0-9.]*' | cut -d: -f2")),
    ?assertMatch({ok, 0, _}, evum:cmd(Vm, "route -n | grep -q '^0.0.0.0 *10.0.2.2 '")),
    ?assertMatch({ok, 0, _}, evum:cmd(Vm, "ping -c 1 -W 2 10.0.2.2")),
    {ok, #{dhcp_requests := Requests}} = evum_switch:gateway_counters(Switch),
    ?assert(Requests >= 1),
    ok = evm:stop(Vm),
    evum_switch:stop(Switch).

host_loopback(_) ->
    {ok, Listen} = gen_tcp:listen(0, [binary, {ip, {127, 0, 0, 1}}, {active, false}]),
    {ok, Port} = inet:port(Listen),
    Send = fun(Vm, Gw) ->
        evum:cmd(Vm, ["echo from-guest | nc -w 2 ", Gw, " ", integer_to_list(Port)])
    end,
    %% On `user' (the default) the gateway's address is not the host.
    Closed = create([{net, user}]),
    ?assertMatch({ok, Status, _} when Status =/= 0, Send(Closed, "10.0.2.2")),
    ?assertEqual({error, timeout}, gen_tcp:accept(Listen, 500)),
    ok = evm:stop(Closed),
    %% On a network with host_loopback = true it is. (nc ends when the
    %% host closes the connection.)
    Open = create([{net, devnet}]),
    Self = self(),
    spawn_link(fun() ->
        {ok, Sock} = gen_tcp:accept(Listen, 10000),
        Self ! {received, gen_tcp:recv(Sock, 0, 5000)},
        gen_tcp:close(Sock)
    end),
    ?assertMatch({ok, 0, _}, Send(Open, "10.0.9.2")),
    ?assertEqual({received, {ok, <<"from-guest\n">>}}, receive {received, _} = R -> R after 5000 -> timeout end),
    ok = evm:stop(Open),
    gen_tcp:close(Listen).

bad_forwards(_) ->
    Vm = create([]),
    ?assertEqual({error, no_switch}, evum:forward(Vm, {tcp, 0, 80})),
    ok = evm:stop(Vm),
    {ok, Switch} = evum_switch:start([anonymous]),
    OnSwitch = create([{switch, Switch}]),
    {ok, 0, _} = evum:cmd(OnSwitch, "ifconfig eth0 10.1.1.1 up"),
    ?assertEqual({error, no_gateway}, evum:forward(OnSwitch, {tcp, 0, 80})),
    ok = evm:stop(OnSwitch),
    evum_switch:stop(Switch),
    Gw = create([{net, user}]),
    ?assertEqual({error, {bad_forward, {sctp, 0, 80}}}, evum:forward(Gw, {sctp, 0, 80})),
    ?assertEqual({error, {bad_forward, {tcp, 70000, 80}}}, evum:forward(Gw, {tcp, 70000, 80})),
    ?assertMatch({error, {bad_forward, _}}, evum:forward(Gw, {tcp, {"not an address", 0}, 80})),
    ?assertEqual({error, {bad_forward, nonsense}}, evum:forward(Gw, nonsense)),
    {ok, Port} = evum:forward(Gw, {tcp, 0, 80}),
    ?assertMatch({error, {exists, _}}, evum:forward(Gw, {tcp, Port, 81})),
    ?assertMatch({error, {not_found, _}}, evum:unforward(Gw, {tcp, Port + 1})),
    ok = evm:stop(Gw).

%%% Helpers

%% This machine's own addresses other than the loopback.
other_local_addresses() ->
    {ok, Ifs} = inet:getifaddrs(),
    [A || {_, Opts} <- Ifs, {addr, {_, _, _, _} = A} <- Opts, element(1, A) =/= 127].

wait_until(Fun) -> wait_until(Fun, 50).
wait_until(_Fun, 0) -> false;
wait_until(Fun, N) ->
    case Fun() of
        true -> true;
        false -> timer:sleep(100), wait_until(Fun, N - 1)
    end.
