%% @doc Watching a switch: a process attached to it promiscuously that
%% prints one line per frame, as tcpdump would, to the group leader of the
%% process that started it (the shell that typed evum:sniff/1).
-module(evum_sniff).

-export([start/1, describe/1, format_mac/1]).

%% @doc Starts printing every frame on `Switch'; stop it with exit(Pid, kill)
%% or by stopping the switch.
-spec start(evum_switch:switch()) -> {ok, pid()} | {error, term()}.
start(Switch) ->
    Out = group_leader(),
    Self = self(),
    Pid = spawn(fun() ->
        Result = evum_switch:attach(Switch, [promiscuous]),
        Self ! {self(), Result},
        case Result of
            {ok, _} -> print(Out, monitor(process, whereis_switch(Switch)));
            _ -> ok
        end
    end),
    receive
        {Pid, {ok, _}} -> {ok, Pid};
        {Pid, Error} -> Error
    end.

whereis_switch(Pid) when is_pid(Pid) -> Pid;
whereis_switch(Name) -> whereis(Name).

print(Out, Ref) ->
    receive
        {evum_frame, _, _Port, Frame} ->
            io:format(Out, "~s~n", [describe(Frame)]),
            print(Out, Ref);
        {'DOWN', Ref, process, _, _} ->
            ok
    end.

%% @doc One line about an Ethernet frame: addresses, and what it carries
%% for the protocols a guest network mostly speaks.
-spec describe(binary()) -> iolist().
describe(<<Dst:6/binary, Src:6/binary, Type:16, Payload/binary>> = Frame) ->
    [format_mac(Src), " > ", format_mac(Dst), ", ", payload(Type, Payload), io_lib:format(", ~b bytes", [byte_size(Frame)])];
describe(Frame) ->
    io_lib:format("runt of ~b bytes", [byte_size(Frame)]).

payload(16#0806, <<1:16, 16#0800:16, 6, 4, Op:16, _:6/binary, Spa:4/binary, _:6/binary, Tpa:4/binary, _/binary>>) ->
    case Op of
        1 -> ["ARP who-has ", ip(Tpa), " tell ", ip(Spa)];
        2 -> ["ARP ", ip(Spa), " is-at"];
        _ -> io_lib:format("ARP op ~b", [Op])
    end;
payload(16#0800, <<4:4, Ihl:4, _:8/binary, Proto, _:16, Src:4/binary, Dst:4/binary, _/binary>> = Ip) when Ihl >= 5 ->
    HeaderLen = Ihl * 4,
    Rest =
        case Ip of
            <<_:HeaderLen/binary, R/binary>> -> R;
            _ -> <<>>
        end,
    ["IPv4 ", ip(Src), " > ", ip(Dst), ": ", transport(Proto, Rest)];
payload(16#86dd, _) ->
    "IPv6";
payload(Type, _) ->
    io_lib:format("ethertype 0x~4.16.0b", [Type]).

transport(1, <<8, _/binary>>) -> "ICMP echo request";
transport(1, <<0, _/binary>>) -> "ICMP echo reply";
transport(1, <<Type, _/binary>>) -> io_lib:format("ICMP type ~b", [Type]);
transport(6, <<Sp:16, Dp:16, _/binary>>) -> io_lib:format("TCP ~b > ~b", [Sp, Dp]);
transport(17, <<Sp:16, Dp:16, _/binary>>) -> io_lib:format("UDP ~b > ~b", [Sp, Dp]);
transport(Proto, _) -> io_lib:format("protocol ~b", [Proto]).

%% @doc A MAC address as text: `"02:ee:00:00:00:01"'.
-spec format_mac(<<_:48>>) -> string().
format_mac(Mac) ->
    lists:flatten(lists:join(":", [io_lib:format("~2.16.0b", [B]) || <<B>> <= Mac])).

ip(<<A, B, C, D>>) ->
    io_lib:format("~b.~b.~b.~b", [A, B, C, D]).
