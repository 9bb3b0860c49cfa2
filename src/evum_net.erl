%% @doc Networks by name, as the original evum configured them: each has a
%% switch of its own (started on first use) and hands out addresses from
%% `base_ip' + `first_ip' upwards, with its netmask and gateway.
%%
%% ```
%% {ok, Vm} = evm:create([{label, a}, {net, home}]).  % eth0 up as 192.168.213.92
%% '''
%%
%% A label keeps its address while evum runs; unlabelled VMs give theirs
%% back when they end. The networks are configured in evm.toml (see
%% evum_config); one with `gateway = true' has evum's gateway on its switch.
-module(evum_net).
-behaviour(gen_server).

-export([start_link/0, switch/1, lease/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-type lease() :: #{
    switch := pid(),
    address := binary(),
    netmask := binary(),
    gateway := binary(),
    dns => binary()
}.
-export_type([lease/0]).

%% Addresses evm:create hands out on a network, from first_ip on (as
%% evum_core::config::STATIC_ADDRESSES): a gateway's DHCP serves the next 16.
-define(STATIC_ADDRESSES, 64).

-record(net, {
    switch :: pid() | undefined,
    config :: map(),
    %% Address offsets in use: Key (label or VM pid) => offset.
    leases = #{} :: #{term() => non_neg_integer()}
}).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The switch of network `Name', started on first use.
-spec switch(atom()) -> {ok, pid()} | {error, term()}.
switch(Name) ->
    gen_server:call(?MODULE, {switch, Name}).

%% @doc An address on network `Name' for the VM with a label (kept while
%% evum runs) or for a VM process (given back when it ends).
-spec lease(atom(), {label, atom()} | {vm, pid()}) -> {ok, lease()} | {error, term()}.
lease(Name, Key) ->
    gen_server:call(?MODULE, {lease, Name, Key}).

init([]) ->
    {ok, #{}}.

handle_call({switch, Name}, _From, Nets) ->
    case with_switch(Name, Nets) of
        {ok, #net{switch = Switch} = Net} -> {reply, {ok, Switch}, Nets#{Name => Net}};
        {error, _} = Error -> {reply, Error, Nets}
    end;
handle_call({lease, Name, Key}, _From, Nets) ->
    case with_switch(Name, Nets) of
        {ok, Net0} ->
            case take_offset(Key, Net0) of
                {ok, Offset, Net} -> {reply, {ok, lease_of(Net, Offset)}, Nets#{Name => Net}};
                {error, _} = Error -> {reply, Error, Nets}
            end;
        {error, _} = Error ->
            {reply, Error, Nets}
    end;
handle_call(_Request, _From, Nets) ->
    {reply, {error, unknown_request}, Nets}.

handle_cast(_Msg, Nets) ->
    {noreply, Nets}.

%% An unlabelled VM ended: its address is free again.
handle_info({'DOWN', _, process, Pid, _}, Nets) ->
    {noreply, maps:map(fun(_, #net{leases = L} = Net) -> Net#net{leases = maps:remove({vm, Pid}, L)} end, Nets)};
handle_info(_Msg, Nets) ->
    {noreply, Nets}.

with_switch(Name, Nets) ->
    case network(Name, Nets) of
        {ok, Net} -> ensure_switch(Net);
        Error -> Error
    end.

network(Name, Nets) ->
    case Nets of
        #{Name := Net} ->
            {ok, Net};
        _ ->
            case evum_config:network(Name) of
                {ok, Config} -> {ok, #net{config = Config#{name => Name}}};
                {error, _} = Error -> Error
            end
    end.

ensure_switch(#net{switch = Pid} = Net) when is_pid(Pid) ->
    case is_process_alive(Pid) of
        true -> {ok, Net};
        false -> ensure_switch(Net#net{switch = undefined})
    end;
ensure_switch(#net{config = Config} = Net) ->
    case evum_switch:start([anonymous | gateway(Config)]) of
        {ok, Pid} ->
            %% The network's switch lives as long as the address book does.
            link(Pid),
            {ok, Net#net{switch = Pid}};
        {error, _} = Error ->
            Error
    end.

%% A network with `gateway = true' has evum's gateway at `gw': DNS at
%% base_ip 3, DHCP for the 16 addresses after the ones evm:create hands out.
gateway(#{gateway := true, base_ip := Base, first_ip := First, netmask := Mask, gw := Gw} = Config) ->
    <<Bits:32>> = address(Mask),
    <<Net:32>> = address(<<Base/binary, "0">>),
    <<N1, N2, N3, N4>> = <<(Net band Bits):32>>,
    Host = fun(Last) -> <<Base/binary, (integer_to_binary(Last))/binary>> end,
    [
        {gateway, #{
            network => {N1, N2, N3, N4},
            prefix_len => length([1 || <<1:1>> <= <<Bits:32>>]),
            gateway => Gw,
            dns => Host(3),
            dhcp_start => Host(First + ?STATIC_ADDRESSES),
            host_loopback => maps:get(host_loopback, Config)
        }}
    ];
gateway(_) ->
    [].

address(Text) ->
    {ok, {A, B, C, D}} = inet:parse_ipv4strict_address(binary_to_list(Text)),
    <<A, B, C, D>>.

take_offset(Key, #net{leases = Leases, config = #{first_ip := First}} = Net) ->
    case Leases of
        #{Key := Offset} ->
            {ok, Offset, Net};
        _ ->
            Used = maps:values(Leases),
            case [N || N <- lists:seq(0, min(254 - First, ?STATIC_ADDRESSES - 1)), not lists:member(N, Used)] of
                [] ->
                    {error, {network_full, maps:get(name, Net#net.config)}};
                [Offset | _] ->
                    case Key of
                        {vm, Pid} -> monitor(process, Pid);
                        _ -> ok
                    end,
                    {ok, Offset, Net#net{leases = Leases#{Key => Offset}}}
            end
    end.

lease_of(#net{switch = Switch, config = C}, Offset) ->
    #{base_ip := Base, first_ip := First, netmask := Mask, gw := Gw} = C,
    Lease = #{
        switch => Switch,
        address => <<Base/binary, (integer_to_binary(First + Offset))/binary>>,
        netmask => Mask,
        gateway => Gw
    },
    %% A gateway's network has its DNS server, as its DHCP tells.
    case gateway(C) of
        [{gateway, #{dns := Dns}}] -> Lease#{dns => Dns};
        [] -> Lease
    end.
