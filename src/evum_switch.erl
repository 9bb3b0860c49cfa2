%% @doc An Ethernet switch for VMs, owned by an Erlang process.
%%
%% VMs join it over UML's daemon transport (what Debian's uml_switch speaks)
%% or its vector transport in bess mode; any Erlang process can join it too,
%% with attach/1,2, and then receives every frame for its port as
%%
%% ```
%% {evum_frame, Switch, Port, Frame}
%% '''
%%
%% and sends frames with send/2,3. Switching itself (MAC learning, flooding,
%% bounded queues) happens on a native thread; frames never pass through
%% this process.
-module(evum_switch).
-behaviour(gen_server).

-export([
    start/0,
    start/1,
    stop/1,
    attach/1,
    attach/2,
    detach/2,
    send/2,
    send/3,
    ports/1,
    mac_table/1,
    counters/1,
    control_socket/1,
    bess_socket/1,
    group/1,
    eth_option/2,
    bess_option/2,
    joined/3,
    bind/3,
    partition/2,
    heal/1,
    partitions/1,
    cut/3,
    restore/3,
    capture/3,
    capture/4,
    stop_capture/2,
    impair/3,
    impairments/1,
    clear/2,
    subscribe/1,
    unsubscribe/1,
    forward/3,
    unforward/2,
    forwards/1,
    gateway_counters/1
]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(IS_PORT(P), (is_integer(P) andalso P >= 0 andalso P =< 65535)).
%% A limit's count: what the switch's settings (u32, usize) all hold.
-define(IS_COUNT(N), (is_integer(N) andalso N > 0 andalso N < 1 bsl 32)).
%% The longest busy_poll taken, in microseconds: polling longer than a
%% millisecond before each sleep would be a core spent on waiting.
-define(MAX_BUSY_POLL_US, 1000).

-type switch() :: pid() | atom().
-type port_id() :: non_neg_integer().
-type mac() :: <<_:48>>.
-type address() :: inet:ip4_address() | string() | binary().
%% `{tcp | udp, HostAddress, HostPort, GuestAddress, GuestPort}'; host port 0
%% binds a free one.
-type forward() :: {tcp | udp, address(), inet:port_number(), address(), inet:port_number()}.
-export_type([switch/0, port_id/0, mac/0, address/0, forward/0]).

-record(state, {
    switch :: term(),
    ctl :: binary(),
    bess :: binary(),
    %% Attached ports: Port => {Pid, Monitor}.
    attached = #{} :: #{port_id() => {pid(), reference()}},
    %% VMs on the switch, by the MAC of their interface: Mac => {Vm, Monitor}.
    vms = #{} :: #{mac() => {pid(), reference()}},
    %% The gateway (libslirp), when the switch has one.
    gateway :: term() | undefined,
    %% Forwards made for a process (a VM), removed when it ends:
    %% Monitor => [{Proto, HostAddr, HostPort}].
    forwards_of = #{} :: #{reference() => [{tcp | udp, binary(), inet:port_number()}]},
    %% Processes told of the switch's events: Pid => Monitor.
    subscribers = #{} :: #{pid() => reference()}
}).

%% @doc Starts a switch. The first one started without a name is registered
%% as `evum_switch'.
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    start([]).

%% @doc Options: `{name, Atom}', `anonymous' (no registered name), `hub'
%% (flood every frame to every port), `gateway' or `{gateway, Settings}'
%% (evum's gateway as a port of the switch, like QEMU's user networking:
%% DHCP, DNS, NAT through host sockets, port forwards), `{cpu, Cpu}' (the
%% host CPUs the switch's thread may run on, as evm:create/1's `cpu':
%% `any', the default, `auto', `N' or `[N]'), `{busy_poll, Microseconds}'
%% (0-1000, default 32: the longest the switch's thread polls for frames
%% before it sleeps, as QEMU's `poll-max-ns'; it adapts, growing while
%% frames flow densely and falling to nothing when they do not; 0 never
%% polls, for the least CPU when a core is scarce). Limits, each counted
%% in ports/1 or counters/1 where it bites: `{max_macs, N}' (64: source
%% MACs one port may have in the MAC table; a frame from one more is
%% dropped, `drops_mac_limit'), `{mac_table_size, N}' (8192: in all; new
%% sources past it go unlearned, `mac_table_full'), `{storm_limit, N}'
%% (10000: broadcast and multicast frames a second per port, in bursts of
%% N/5; `drops_storm'), `{port_rate, N}' (infinity: frames a second per
%% port; `drops_rate'), `{port_security, Bool}' (true: a VM's port is
%% locked to the VM's MAC, which no other port may use; `drops_spoofed';
%% with a gateway, ARP and DHCP are checked against the port they come
%% from; `drops_guard'), `{max_hold, Ms}' (50: how long a port's peer may
%% take no frame while its queue is congested before its senders are no
%% longer held back for it, and it drops instead). Gateway settings, a
%% map, all optional: `network' (10.0.2.0), `prefix_len' (24), `gateway'
%% (10.0.2.2), `dns' (10.0.2.3), `dhcp_start' (10.0.2.15), `dns_forwarding'
%% (true), `host_loopback' (false: guests do not reach the host's
%% 127.0.0.1), `max_flows_per_guest' (256), `max_flows' (1024),
%% `tcp_idle_timeout_ms', `udp_idle_timeout_ms', `mtu'. An option it does
%% not know is `{error, {bad_option, Option}}'.
-spec start([{name, atom()} | anonymous | hub | {hub, boolean()} | gateway | {gateway, map()} |
             {cpu, any | auto | non_neg_integer() | [non_neg_integer()]} |
             {busy_poll, 0..1000} | {max_macs, pos_integer()} |
             {mac_table_size, pos_integer()} | {storm_limit, pos_integer() | infinity} |
             {port_rate, pos_integer() | infinity} | {port_security, boolean()} |
             {max_hold, pos_integer()}]) ->
    {ok, pid()} | {error, term()}.
start(Options) ->
    case check_options(Options) of
        ok -> start_checked(Options);
        {error, _} = Error -> Error
    end.

start_checked(Options) ->
    Gateway =
        case proplists:get_value(gateway, Options, false) of
            false -> undefined;
            true -> #{};
            Settings when is_map(Settings) -> Settings
        end,
    {ok, Cpu} = evum_opts:cpu(proplists:get_value(cpu, Options, any)),
    BusyPoll = proplists:get_value(busy_poll, Options, default),
    Init = {proplists:get_bool(hub, Options), Gateway, Cpu, BusyPoll, limits(Options)},
    Name =
        case {proplists:get_bool(anonymous, Options), proplists:get_value(name, Options)} of
            {true, _} -> none;
            {false, undefined} -> default_name();
            {false, N} -> {local, N}
        end,
    Started =
        case Name of
            none -> gen_server:start(?MODULE, Init, []);
            _ -> gen_server:start(Name, ?MODULE, Init, [])
        end,
    case Started of
        %% init/1 ends that way on bad input, which is no crash to report.
        {error, {shutdown, Reason}} -> {error, Reason};
        Other -> Other
    end.

%% The first switch started without a name is registered as evum_switch.
default_name() ->
    case whereis(?MODULE) of
        undefined -> {local, ?MODULE};
        _ -> none
    end.

%% The first option start/1 does not take, as `{error, {bad_option, O}}'.
check_options(Options) when is_list(Options) ->
    case lists:dropwhile(fun good_option/1, Options) of
        [] -> ok;
        [Bad | _] -> {error, {bad_option, Bad}}
    end;
check_options(Options) ->
    {error, {bad_option, Options}}.

good_option({name, Name}) -> is_atom(Name);
good_option(anonymous) -> true;
good_option(hub) -> true;
good_option({hub, Hub}) -> is_boolean(Hub);
good_option(gateway) -> true;
good_option({gateway, Settings}) -> is_boolean(Settings) orelse is_map(Settings);
good_option({cpu, Cpu}) -> element(1, evum_opts:cpu(Cpu)) =:= ok;
good_option({busy_poll, Us}) -> is_integer(Us) andalso Us >= 0 andalso Us =< ?MAX_BUSY_POLL_US;
good_option({max_macs, N}) -> ?IS_COUNT(N);
good_option({mac_table_size, N}) -> ?IS_COUNT(N);
good_option({storm_limit, N}) -> N =:= infinity orelse ?IS_COUNT(N);
good_option({port_rate, N}) -> N =:= infinity orelse ?IS_COUNT(N);
good_option({port_security, On}) -> is_boolean(On);
good_option({max_hold, Ms}) -> ?IS_COUNT(Ms);
good_option({seed, Seed}) -> is_integer(Seed) andalso Seed >= 0 andalso Seed < 1 bsl 64;
good_option(_) -> false.

%% The limits given, for the NIF (which has the defaults), by its names.
limits(Options) ->
    Names = [
        {max_macs, max_macs},
        {mac_table_size, mac_table_size},
        {storm_limit, storm_limit},
        {port_rate, port_rate},
        {port_security, port_security},
        {max_hold, max_hold_ms},
        {seed, seed}
    ],
    %% The first of a name counts, as in proplists.
    maps:from_list(lists:reverse([{Nif, V} || {Option, Nif} <- Names, {O, V} <- Options, O =:= Option])).

-spec stop(switch()) -> ok | {error, not_running}.
stop(Switch) ->
    case where(Switch) of
        undefined ->
            {error, not_running};
        Pid ->
            try
                gen_server:stop(Pid)
            catch
                exit:_ -> {error, not_running}
            end
    end.

%% @doc Makes the calling process a port of the switch, with no MAC of its
%% own: it receives what a port of the switch receives.
-spec attach(switch()) -> {ok, port_id()} | {error, term()}.
attach(Switch) ->
    attach(Switch, []).

%% @doc Options: `{mac, Mac}' (6 bytes, the port's own address: frames for
%% it come to this port alone from the start, even before it has sent
%% anything; without it the port's addresses are learned from its frames),
%% `promiscuous' (every frame on the switch).
-spec attach(switch(), [{mac, mac()} | promiscuous]) -> {ok, port_id()} | {error, term()}.
attach(Switch, Options) ->
    Mac = proplists:get_value(mac, Options, undefined),
    case Mac =:= undefined orelse (is_binary(Mac) andalso byte_size(Mac) =:= 6) of
        true -> call(Switch, {attach, self(), Mac, proplists:get_bool(promiscuous, Options)});
        false -> {error, {bad_option, {mac, Mac}}}
    end.

-spec detach(switch(), port_id()) -> ok | {error, term()}.
detach(Switch, Port) ->
    call(Switch, {detach, Port}).

%% @doc Sends a frame into the switch from the caller's (only) port.
-spec send(switch(), binary()) -> ok | {error, term()}.
send(Switch, Frame) ->
    call(Switch, {send, self(), Frame}).

%% @doc Sends a frame into the switch from one of the caller's ports.
-spec send(switch(), port_id(), binary()) -> ok | {error, term()}.
send(Switch, Port, Frame) when is_binary(Frame) ->
    call(Switch, {send, self(), Port, Frame});
send(_Switch, _Port, Frame) ->
    {error, {not_binary, Frame}}.

%% @doc Every port: id, kind (daemon, bess, attached), MAC, frames and bytes
%% in and out, drops, and its `peer': an attached port's process, or the VM
%% (created with `{switch, S}') whose interface has the port's MAC.
-spec ports(switch()) -> {ok, [map()]} | {error, term()}.
ports(Switch) -> call(Switch, ports).

%% @doc The learned MAC addresses: `[#{mac, port, age_ms}]'.
-spec mac_table(switch()) -> {ok, [map()]} | {error, term()}.
mac_table(Switch) -> call(Switch, mac_table).

%% @doc Input the switch rejected, by reason.
-spec counters(switch()) -> {ok, map()} | {error, term()}.
counters(Switch) -> call(Switch, counters).

%% @doc The daemon transport's control socket.
-spec control_socket(switch()) -> binary().
control_socket(Switch) -> call(Switch, control_socket).

%% @doc The bess transport's socket.
-spec bess_socket(switch()) -> binary().
bess_socket(Switch) -> call(Switch, bess_socket).

%% @doc The host group whose members may use the switch's sockets (besides
%% evum's own user): its VMs' users join it. `undefined' when evum does not
%% run as root (the sockets are then evum's user's only).
-spec group(switch()) -> non_neg_integer() | undefined | {error, not_running}.
group(Switch) -> call(Switch, group).

%% @doc The boot option that puts a VM's eth0 on this switch, with `Mac'.
-spec eth_option(switch(), mac()) -> evum_opts:boot_option() | {error, term()}.
eth_option(Switch, <<_:48>> = Mac) ->
    case control_socket(Switch) of
        Ctl when is_binary(Ctl) -> {eth, 0, "daemon," ++ evum_sniff:format_mac(Mac) ++ ",unix," ++ binary_to_list(Ctl)};
        Error -> Error
    end;
eth_option(_Switch, Mac) ->
    {error, {bad_mac, Mac}}.

%% @doc The boot option that puts a VM's vec0 on this switch over the vector
%% driver's bess mode (kernels after 6.15 have no daemon transport).
-spec bess_option(switch(), mac()) -> evum_opts:boot_option() | {error, term()}.
bess_option(Switch, <<_:48>> = Mac) ->
    %% The name of the VM's end tells the switch the VM's MAC, to which its
    %% port is then locked (port security).
    Hex = lists:flatten([io_lib:format("~2.16.0b", [B]) || <<B>> <= Mac]),
    case bess_socket(Switch) of
        Bess when is_binary(Bess) ->
            {append,
                "vec0:transport=bess,src={runtime_dir}/bess-" ++ Hex ++ ",dst=" ++ binary_to_list(Bess) ++ ",mac=" ++
                    evum_sniff:format_mac(Mac)};
        Error ->
            Error
    end;
bess_option(_Switch, Mac) ->
    {error, {bad_mac, Mac}}.

%% @doc Tells the switch that VM `Vm' is on it with `Mac', so that ports/1
%% can name it as the peer of its port (evm:create/1 does this).
-spec joined(switch(), pid(), mac()) -> ok | {error, term()}.
joined(Switch, Vm, <<_:48>> = Mac) when is_pid(Vm) ->
    case where(Switch) of
        undefined -> {error, not_running};
        Pid -> gen_server:cast(Pid, {joined, Vm, Mac})
    end;
joined(_Switch, Vm, Mac) ->
    {error, {bad_argument, {Vm, Mac}}}.

%% @doc Binds IPv4 `Address' to `Mac' on the switch (evm:create/1 does
%% this for the address it gives a VM on a named network): ARP claiming
%% the address from another MAC is dropped and counted (`drops_guard').
-spec bind(switch(), address(), mac()) -> ok | {error, term()}.
bind(Switch, Address, Mac) ->
    case addr(Address) of
        {ok, A} when is_binary(Mac), byte_size(Mac) =:= 6 ->
            {ok, {B1, B2, B3, B4}} = inet:parse_ipv4strict_address(binary_to_list(A)),
            call(Switch, {bind, <<B1, B2, B3, B4>>, Mac});
        _ ->
            {error, {bad_address, {Address, Mac}}}
    end.

%% @doc Splits the switch: each group of `Groups' (VMs, by pid or label, or
%% port ids) talks inside, not across, and the ports no group names form
%% one more group. Replaces a partition before; in force for every frame
%% after it returns. Frames kept from a port are counted on their sender's
%% port (`drops_nemesis' in ports/1); a promiscuous attached port (a
%% sniffer) still sees them. `{error, {unknown_target, T}}' for a VM that
%% is not on the switch.
-spec partition(switch(), [[evm:vm() | port_id()]]) -> ok | {error, term()}.
partition(Switch, Groups) when is_list(Groups) ->
    case lists:all(fun is_list/1, Groups) of
        true -> call(Switch, {fault, {partition, Groups}});
        false -> {error, {bad_partition, Groups}}
    end;
partition(_Switch, Groups) ->
    {error, {bad_partition, Groups}}.

%% @doc Ends the partition (cuts stay).
-spec heal(switch()) -> ok | {error, term()}.
heal(Switch) ->
    call(Switch, {fault, heal}).

%% @doc The partition's groups and the cuts in force, by port id (ports/1
%% names each port's VM): `{ok, #{groups => [[Port]], cuts => [{From,
%% To}]}}'.
-spec partitions(switch()) -> {ok, #{groups := [[port_id()]], cuts := [{port_id(), port_id()}]}} | {error, term()}.
partitions(Switch) ->
    call(Switch, faults).

%% @doc Drops every frame from `From' to `To' (VMs or ports), the other way
%% not, until restore/3; in force when it returns.
-spec cut(switch(), evm:vm() | port_id(), evm:vm() | port_id()) -> ok | {error, term()}.
cut(Switch, From, To) ->
    call(Switch, {fault, {cut, From, To}}).

%% @doc Ends a cut/3.
-spec restore(switch(), evm:vm() | port_id(), evm:vm() | port_id()) -> ok | {error, term()}.
restore(Switch, From, To) ->
    call(Switch, {fault, {restore, From, To}}).

%% @doc Captures the frames the switch forwards from and to `Target' (a VM,
%% by pid or label, or a port id; `all': every frame) into `File', a new
%% pcap file (nanosecond timestamps) that tshark and Wireshark read, until
%% stop_capture/2: `{ok, Capture}'. An existing file is not overwritten
%% (`{error, {capture, Why}}').
-spec capture(switch(), evm:vm() | port_id() | all, file:filename_all() | {pid, pid()}) ->
    {ok, pos_integer()} | {error, term()}.
capture(Switch, Target, File) ->
    capture(Switch, Target, File, []).

%% @doc As capture/3, with `{max_bytes, N}' (1 GiB by default): the file
%% stops growing there, and the frames it misses after are counted. With
%% `{pid, Pid}' instead of a file, Pid gets each frame as `{evum_capture,
%% Switch, Target, Frame}' (Target the port id, 0 for `all'), at most
%% `{max_frames, N}' of them (100000 by default; the rest are counted as
%% missed), so that its mailbox stays bounded.
-spec capture(switch(), evm:vm() | port_id() | all, file:filename_all() | {pid, pid()},
              [{max_bytes, pos_integer()} | {max_frames, pos_integer()}]) ->
    {ok, pos_integer()} | {error, term()}.
capture(Switch, Target, {pid, Pid}, Options) when is_pid(Pid) ->
    case proplists:get_value(max_frames, Options, 100000) of
        Max when is_integer(Max), Max > 0 -> call(Switch, {capture_to, Target, Pid, Max});
        Max -> {error, {bad_option, {max_frames, Max}}}
    end;
capture(Switch, Target, File, Options) ->
    case {proplists:get_value(max_bytes, Options, 1 bsl 30), is_list(File) orelse is_binary(File)} of
        {Max, true} when is_integer(Max), Max > 0 -> call(Switch, {capture, Target, unicode:characters_to_binary(File), Max});
        {Max, true} -> {error, {bad_option, {max_bytes, Max}}};
        {_, false} -> {error, {bad_option, {file, File}}}
    end.

%% @doc Ends a capture, its file complete: `{ok, #{frames, bytes,
%% missed}}'.
-spec stop_capture(switch(), pos_integer()) -> {ok, map()} | {error, term()}.
stop_capture(Switch, Capture) when is_integer(Capture) ->
    call(Switch, {stop_capture, Capture});
stop_capture(_Switch, Capture) ->
    {error, {unknown_capture, Capture}}.

%% @doc Impairs a link, as netem does: the frames to `Target' (a VM, by pid
%% or label, or a port id), or those from one to another (`{From, To}').
%% Settings, all optional: `loss' (a probability, 0 to 1), `loss_burst'
%% (`{P, MeanLen}': a burst of loss starts at a frame with probability P
%% and takes MeanLen frames on average), `delay' and `jitter' (ms: each
%% frame waits delay plus or minus up to jitter), `duplicate', `reorder'
%% (the chance a frame skips the delay and overtakes those waiting),
%% `corrupt' (the chance one bit of a frame flips), `rate' (bits a second).
%% Replaces the link's settings before; in force for every frame after it
%% returns. The switch's random draws come from its `{seed, N}' (start/1)
%% when given, so a run can be replayed. A link holds at most 4096 frames;
%% what is over is dropped and counted (`overflow' in impairments/1).
-spec impair(switch(), evm:vm() | port_id() | {evm:vm() | port_id(), evm:vm() | port_id()}, map()) ->
    ok | {error, term()}.
impair(Switch, Target, Settings) when is_map(Settings) ->
    case impairment(Settings) of
        {ok, Checked} -> call(Switch, {impair, Target, Checked});
        Error -> Error
    end;
impair(_Switch, _Target, Settings) ->
    {error, {bad_impairment, Settings}}.

%% @doc Makes a link clean again at once: no impairment, no frame held.
-spec clear(switch(), evm:vm() | port_id() | {evm:vm() | port_id(), evm:vm() | port_id()}) -> ok | {error, term()}.
clear(Switch, Target) ->
    call(Switch, {impair, Target, clean}).

%% @doc Every impaired link (`{to, Port}' or `{pair, From, To}') with what
%% it did: frames, lost, duplicated, corrupted, reordered, overflow, held.
-spec impairments(switch()) -> {ok, [map()]} | {error, term()}.
impairments(Switch) ->
    call(Switch, impairments).

%% Impairment settings as the NIF takes them: every key, times in µs.
impairment(Settings) ->
    Known = [loss, loss_burst, delay, jitter, duplicate, reorder, corrupt, rate],
    Get = fun(K, D) -> maps:get(K, Settings, D) end,
    Probability = fun(P) -> is_number(P) andalso P >= 0 andalso P =< 1 end,
    Ms = fun(M) -> is_number(M) andalso M >= 0 andalso M =< 3600000 end,
    Checks = [
        {loss, Probability},
        {duplicate, Probability},
        {reorder, Probability},
        {corrupt, Probability},
        {delay, Ms},
        {jitter, Ms},
        {rate, fun(R) -> is_integer(R) andalso R > 0 andalso R < 1 bsl 64 end},
        {loss_burst, fun({P, L}) -> Probability(P) andalso is_number(L) andalso L >= 1; (_) -> false end}
    ],
    Bad = [{K, V} || {K, Check} <- Checks, #{K := V} <- [Settings], not Check(V)] ++
        [{K, V} || {K, V} <- maps:to_list(Settings), not lists:member(K, Known)],
    case Bad of
        [] ->
            {BurstP, BurstLen} = Get(loss_burst, {0, 1}),
            {ok, #{
                loss => float(Get(loss, 0)),
                loss_burst => {float(BurstP), float(BurstLen)},
                delay_us => round(Get(delay, 0) * 1000),
                jitter_us => round(Get(jitter, 0) * 1000),
                duplicate => float(Get(duplicate, 0)),
                reorder => float(Get(reorder, 0)),
                corrupt => float(Get(corrupt, 0)),
                rate => Get(rate, 0)
            }};
        [First | _] ->
            {error, {bad_impairment, First}}
    end.

%% @doc Tells the caller of the switch's events, each as `{evum_switch,
%% Switch, Event}' with Event one of: `{port_up, Port, Kind, Mac |
%% undefined}', `{port_down, Port}', `{mac_moved, Mac, FromPort, ToPort}'
%% (at most 100 a second; the rest are counted in counters/1's
%% `events_dropped'), `{partition, [[Port]]}', `heal', `{cut, From, To}',
%% `{restore, From, To}', `{impair, Link, Settings}', `{clear, Link}'
%% (Link: `{to, Port}' or `{pair, From, To}'). Until unsubscribe/1 or the
%% caller's end.
-spec subscribe(switch()) -> ok | {error, term()}.
subscribe(Switch) ->
    call(Switch, {subscribe, self()}).

-spec unsubscribe(switch()) -> ok | {error, term()}.
unsubscribe(Switch) ->
    call(Switch, {unsubscribe, self()}).

%% @doc Forwards `HostAddress:HostPort' on the host to `GuestAddress:GuestPort'
%% through the switch's gateway: `{ok, BoundHostPort}'. With a `For' process
%% (a VM), the forward goes when that process ends.
-spec forward(switch(), forward(), pid() | undefined) -> {ok, inet:port_number()} | {error, term()}.
forward(Switch, {Proto, HostAddr, HostPort, GuestAddr, GuestPort} = Forward, For) ->
    case {addr(HostAddr), addr(GuestAddr)} of
        {{ok, H}, {ok, G}} when (Proto =:= tcp orelse Proto =:= udp), ?IS_PORT(HostPort), ?IS_PORT(GuestPort) ->
            call(Switch, {forward, {Proto, H, HostPort, G, GuestPort}, For});
        _ ->
            {error, {bad_forward, Forward}}
    end.

%% @doc Removes the forward of `{Proto, HostAddress, HostPort}'.
-spec unforward(switch(), {tcp | udp, address(), inet:port_number()}) -> ok | {error, term()}.
unforward(Switch, {Proto, HostAddr, HostPort} = Which) ->
    case addr(HostAddr) of
        {ok, H} when (Proto =:= tcp orelse Proto =:= udp), ?IS_PORT(HostPort) ->
            call(Switch, {unforward, {Proto, H, HostPort}});
        _ ->
            {error, {bad_forward, Which}}
    end.

%% @doc The gateway's forwards, with connections and bytes each way.
-spec forwards(switch()) -> {ok, [map()]} | {error, term()}.
forwards(Switch) ->
    gateway_call(Switch, fun evum_nif:gateway_forwards/1).

%% @doc The gateway's counters: frames, flows opened and active, drops by
%% reason, and every NAT flow with its packets and bytes each way.
-spec gateway_counters(switch()) -> {ok, map()} | {error, term()}.
gateway_counters(Switch) ->
    gateway_call(Switch, fun evum_nif:gateway_counters/1).

gateway_call(Switch, Fun) ->
    case call(Switch, gateway) of
        {ok, Gateway} -> Fun(Gateway);
        Error -> Error
    end.

%% A fault with its targets as port ids.
port_ids(heal, _S) ->
    {ok, heal};
port_ids({partition, Groups}, S) ->
    Ports = [[port_id(T, S) || T <- Group] || Group <- Groups],
    case [Bad || Group <- Ports, {error, _} = Bad <- Group] of
        [] -> {ok, {partition, Ports}};
        [Error | _] -> Error
    end;
port_ids({Kind, From, To}, S) ->
    case {port_id(From, S), port_id(To, S)} of
        {{error, _} = Error, _} -> Error;
        {_, {error, _} = Error} -> Error;
        {F, T} -> {ok, {Kind, F, T}}
    end.

%% What a capture takes: `all', or a port.
capture_target(all, _S) -> all;
capture_target(Target, S) -> port_id(Target, S).

%% A port by its id, or the port of a VM on the switch (the port with the
%% VM's MAC).
port_id(Port, _S) when is_integer(Port), Port >= 0 ->
    Port;
port_id(Vm, #state{switch = Switch, vms = Vms}) when is_pid(Vm); is_atom(Vm) ->
    Pid =
        case is_atom(Vm) of
            true -> whereis(Vm);
            false -> Vm
        end,
    Macs = [Mac || {Mac, {P, _}} <- maps:to_list(Vms), P =:= Pid],
    Ports =
        case evum_nif:switch_ports(Switch) of
            {ok, All} -> [Id || #{id := Id, mac := Mac} <- All, lists:member(Mac, Macs)];
            _ -> []
        end,
    case Ports of
        [Id | _] -> Id;
        [] -> {error, {unknown_target, Vm}}
    end;
port_id(Other, _S) ->
    {error, {unknown_target, Other}}.

%% A call to the switch; `{error, not_running}' for a switch that is not
%% there (or a term that is no switch).
call(Switch, Request) ->
    case where(Switch) of
        undefined ->
            {error, not_running};
        Pid ->
            try
                gen_server:call(Pid, Request)
            catch
                exit:{Why, _} when Why =:= noproc; Why =:= normal; Why =:= shutdown; element(1, Why) =:= shutdown ->
                    {error, not_running}
            end
    end.

%% The switch's pid, if it runs.
where(Pid) when is_pid(Pid), node(Pid) =:= node() ->
    case is_process_alive(Pid) of
        true -> Pid;
        false -> undefined
    end;
where(Name) when is_atom(Name) ->
    whereis(Name);
where(_) ->
    undefined.

addr({_, _, _, _} = A) -> {ok, list_to_binary(inet:ntoa(A))};
addr(A) when is_list(A) -> addr(list_to_binary(A));
addr(A) when is_binary(A) ->
    case inet:parse_ipv4strict_address(binary_to_list(A)) of
        {ok, _} -> {ok, A};
        {error, _} -> error
    end;
addr(_) -> error.

%%% gen_server

init({Hub, Gateway, Cpu, BusyPoll, Limits}) ->
    case evum_nif:switch_start(Hub, Cpu, BusyPoll, Limits) of
        {ok, Switch} ->
            {ok, Ctl, Bess} = evum_nif:switch_sockets(Switch),
            S = #state{switch = Switch, ctl = Ctl, bess = Bess},
            ok = evum_nif:switch_events(Switch, self()),
            case start_gateway(Gateway, Switch) of
                {ok, G} ->
                    {ok, S#state{gateway = G}};
                {error, Reason} ->
                    evum_nif:switch_stop(Switch),
                    {stop, {shutdown, {gateway, Reason}}}
            end;
        {error, Reason} ->
            {stop, {shutdown, Reason}}
    end.

start_gateway(undefined, _Switch) ->
    {ok, undefined};
start_gateway(Settings, Switch) ->
    try
        evum_nif:gateway_start(Switch, Settings)
    catch
        error:badarg -> {error, {bad_option, {gateway, Settings}}}
    end.

handle_call({attach, Pid, Mac, Promiscuous}, _From, #state{switch = Switch, attached = A} = S) ->
    case evum_nif:switch_attach(Switch, Pid, self(), Mac, Promiscuous) of
        {ok, Port} ->
            Ref = monitor(process, Pid),
            {reply, {ok, Port}, S#state{attached = A#{Port => {Pid, Ref}}}};
        Error ->
            {reply, Error, S}
    end;
handle_call({detach, Port}, _From, #state{switch = Switch, attached = A} = S) ->
    case maps:take(Port, A) of
        {{_, Ref}, Rest} ->
            demonitor(Ref, [flush]),
            {reply, evum_nif:switch_detach(Switch, Port), S#state{attached = Rest}};
        error ->
            {reply, {error, unknown_port}, S}
    end;
handle_call({send, Pid, Frame}, From, #state{attached = A} = S) ->
    case [Port || {Port, {P, _}} <- maps:to_list(A), P =:= Pid] of
        [Port] -> handle_call({send, Pid, Port, Frame}, From, S);
        [] -> {reply, {error, not_attached}, S};
        _ -> {reply, {error, several_ports}, S}
    end;
handle_call({send, Pid, Port, Frame}, _From, #state{switch = Switch, attached = A} = S) ->
    case A of
        #{Port := {Pid, _}} when is_binary(Frame) -> {reply, evum_nif:switch_inject(Switch, Port, Frame), S};
        #{Port := {Pid, _}} -> {reply, {error, {not_binary, Frame}}, S};
        _ -> {reply, {error, not_attached}, S}
    end;
handle_call(ports, _From, #state{switch = Switch, attached = A, vms = Vms} = S) ->
    %% A port's peer: an attached port's process, or the VM whose MAC it has.
    Reply =
        case evum_nif:switch_ports(Switch) of
            {ok, Ports} ->
                {ok, [
                    case {A, Vms} of
                        {#{Id := {Pid, _}}, _} -> Port#{peer => Pid};
                        {_, #{Mac := {Vm, _}}} -> Port#{peer => Vm};
                        _ -> Port
                    end
                 || #{id := Id, mac := Mac} = Port <- Ports
                ]};
            Error ->
                Error
        end,
    {reply, Reply, S};
handle_call({fault, Fault}, _From, #state{switch = Switch} = S) ->
    Reply =
        case port_ids(Fault, S) of
            {ok, Resolved} ->
                Done = evum_nif:switch_fault(Switch, Resolved),
                Done =:= ok andalso notify(Resolved, S),
                Done;
            Error ->
                Error
        end,
    {reply, Reply, S};
handle_call({subscribe, Pid}, _From, #state{subscribers = Subs} = S) ->
    case Subs of
        #{Pid := _} -> {reply, ok, S};
        _ -> {reply, ok, S#state{subscribers = Subs#{Pid => monitor(process, Pid)}}}
    end;
handle_call({unsubscribe, Pid}, _From, #state{subscribers = Subs} = S) ->
    case maps:take(Pid, Subs) of
        {Ref, Rest} ->
            demonitor(Ref, [flush]),
            {reply, ok, S#state{subscribers = Rest}};
        error ->
            {reply, ok, S}
    end;
handle_call({capture, Target, File, Max}, _From, #state{switch = Switch} = S) ->
    Reply =
        case capture_target(Target, S) of
            {error, _} = Error -> Error;
            Port -> evum_nif:switch_capture(Switch, Port, File, Max)
        end,
    {reply, Reply, S};
handle_call({impair, Target, Settings}, _From, #state{switch = Switch} = S) ->
    Link =
        case Target of
            {From, To} ->
                case {port_id(From, S), port_id(To, S)} of
                    {{error, _} = Error, _} -> Error;
                    {_, {error, _} = Error} -> Error;
                    {F, T} -> {pair, F, T}
                end;
            _ ->
                case port_id(Target, S) of
                    {error, _} = Error -> Error;
                    Port -> {to, Port}
                end
        end,
    Reply =
        case Link of
            {error, _} ->
                Link;
            _ ->
                Done = evum_nif:switch_impair(Switch, Link, Settings),
                Event =
                    case Settings of
                        clean -> {clear, Link};
                        _ -> {impair, Link, Settings}
                    end,
                Done =:= ok andalso notify(Event, S),
                Done
        end,
    {reply, Reply, S};
handle_call(impairments, _From, #state{switch = Switch} = S) ->
    {reply, evum_nif:switch_impairments(Switch), S};
handle_call({capture_to, Target, Pid, Max}, _From, #state{switch = Switch} = S) ->
    Reply =
        case capture_target(Target, S) of
            {error, _} = Error -> Error;
            Port -> evum_nif:switch_capture_to(Switch, Port, Pid, self(), Max)
        end,
    {reply, Reply, S};
handle_call({stop_capture, Capture}, _From, #state{switch = Switch} = S) ->
    {reply, evum_nif:switch_stop_capture(Switch, Capture), S};
handle_call(faults, _From, #state{switch = Switch} = S) ->
    {reply, evum_nif:switch_faults(Switch), S};
handle_call(mac_table, _From, #state{switch = Switch} = S) ->
    {reply, evum_nif:switch_mac_table(Switch), S};
handle_call(counters, _From, #state{switch = Switch} = S) ->
    {reply, evum_nif:switch_counters(Switch), S};
handle_call({bind, Address, Mac}, _From, #state{switch = Switch} = S) ->
    {reply, evum_nif:switch_bind(Switch, Address, Mac), S};
handle_call(control_socket, _From, #state{ctl = Ctl} = S) ->
    {reply, Ctl, S};
handle_call(group, _From, #state{switch = Switch} = S) ->
    {reply, evum_nif:switch_group(Switch), S};
handle_call(bess_socket, _From, #state{bess = Bess} = S) ->
    {reply, Bess, S};
handle_call(gateway, _From, #state{gateway = undefined} = S) ->
    {reply, {error, no_gateway}, S};
handle_call(gateway, _From, #state{gateway = G} = S) ->
    {reply, {ok, G}, S};
handle_call({forward, _, _}, _From, #state{gateway = undefined} = S) ->
    {reply, {error, no_gateway}, S};
handle_call({forward, {Proto, H, _, _, _} = Forward, For}, _From, #state{gateway = G, forwards_of = F} = S) ->
    case evum_nif:gateway_add_forward(G, Forward) of
        {ok, Port} when is_pid(For) ->
            Ref = monitor(process, For),
            {reply, {ok, Port}, S#state{forwards_of = F#{Ref => [{Proto, H, Port}]}}};
        Reply ->
            {reply, Reply, S}
    end;
handle_call({unforward, _}, _From, #state{gateway = undefined} = S) ->
    {reply, {error, no_gateway}, S};
handle_call({unforward, Which}, _From, #state{gateway = G, forwards_of = F} = S) ->
    %% Its process's monitor stays; when it fires there is nothing to drop.
    Kept = maps:filter(fun(_, Forwards) -> Forwards =/= [Which] end, F),
    {reply, evum_nif:gateway_remove_forward(G, Which), S#state{forwards_of = Kept}};
handle_call(_Request, _From, S) ->
    {reply, {error, unknown_request}, S}.

handle_cast({joined, Vm, Mac}, #state{vms = Vms} = S) ->
    {noreply, S#state{vms = Vms#{Mac => {Vm, monitor(process, Vm)}}}};
handle_cast(_Msg, S) ->
    {noreply, S}.

%% An attached process is gone: so is its port. A VM is gone: forget it.
handle_info({'DOWN', Ref, process, Pid, _}, #state{subscribers = Subs} = S) when
    is_map_key(Pid, Subs), map_get(Pid, Subs) =:= Ref
->
    {noreply, S#state{subscribers = maps:remove(Pid, Subs)}};
handle_info({'DOWN', Ref, process, _Pid, _}, #state{switch = Switch, attached = A, vms = Vms} = S) ->
    case [Port || {Port, {_, R}} <- maps:to_list(A), R =:= Ref] of
        [Port] ->
            evum_nif:switch_detach(Switch, Port),
            {noreply, S#state{attached = maps:remove(Port, A)}};
        [] ->
            S1 = S#state{vms = maps:filter(fun(_, {_, R}) -> R =/= Ref end, Vms)},
            {noreply, drop_forwards(Ref, S1)}
    end;
handle_info({evum_switch_event, Event}, S) ->
    notify(Event, S),
    {noreply, S};
handle_info(_Msg, S) ->
    {noreply, S}.

%% Tells every subscriber.
notify(Event, #state{subscribers = Subs}) ->
    [Pid ! {evum_switch, self(), Event} || Pid <- maps:keys(Subs)],
    ok.

%% A process a forward was made for has ended: the forward goes too.
drop_forwards(Ref, #state{forwards_of = F, gateway = G} = S) ->
    case maps:take(Ref, F) of
        {Forwards, Rest} ->
            [evum_nif:gateway_remove_forward(G, W) || W <- Forwards],
            S#state{forwards_of = Rest};
        error ->
            S
    end.

terminate(_Reason, #state{switch = Switch, gateway = Gateway}) ->
    Gateway =:= undefined orelse evum_nif:gateway_stop(Gateway),
    evum_nif:switch_stop(Switch).
