#!/usr/bin/env escript
%% A distributed Erlang node for evum's lab test, run in a guest of the
%% `host' dist: `escript lab.escript Name "Peer ..."'. It keeps connecting
%% to its peers and appends each node event it sees to /tmp/events, one
%% line each: `nodeup Node' or `nodedown Node'.
main([Name, Peers]) ->
    %% Ticks every 500 ms: a peer is down after 2 s without an answer; a
    %% connection that cannot be set up gives up after 1 s.
    ok = application:set_env(kernel, net_setuptime, 1),
    {ok, _} = net_kernel:start([list_to_atom(Name), longnames, 2000]),
    erlang:set_cookie(node(), evum),
    ok = net_kernel:monitor_nodes(true),
    loop([list_to_atom(P) || P <- string:lexemes(Peers, " ")]).

loop(Peers) ->
    [net_kernel:connect_node(P) || P <- Peers, not lists:member(P, nodes())],
    receive
        {Event, Node} when Event =:= nodeup; Event =:= nodedown ->
            ok = file:write_file("/tmp/events", io_lib:format("~s ~s~n", [Event, Node]), [append]),
            loop(Peers)
    after 300 ->
        loop(Peers)
    end.
