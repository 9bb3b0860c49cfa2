%% @doc The network that evum:start/0,1 VMs join, as in the original
%% README's "Using the Host OS" session:
%%
%% ```
%% 1> {ok, Switch} = evum_switch:start().
%% 2> evum_ctl:start(Switch).
%% 3> {ok, R} = evum:start().     % eth0 on Switch
%% '''
%%
%% While the evum_ctl process runs, VMs started with evum:start/0,1 get an
%% eth0 on its switch; stop it and they start without a network.
-module(evum_ctl).

-export([start/1, start/2, stop/0, switch/0]).
-export([init/1]).

%% @doc Makes `Switch' the network of evum:start/0,1 VMs.
-spec start(evum_switch:switch()) -> {ok, pid()} | {error, term()}.
start(Switch) ->
    start(Switch, []).

%% @doc Options are reserved for what the original took; none is known yet
%% and any is `{error, {bad_option, O}}'.
-spec start(evum_switch:switch(), list()) -> {ok, pid()} | {error, term()}.
start(_Switch, [O | _]) ->
    {error, {bad_option, O}};
start(Switch, []) ->
    case evum_switch:group(Switch) of
        {error, _} -> {error, {bad_option, {switch, Switch}}};
        _ -> start_on(Switch)
    end;
start(_Switch, Options) ->
    {error, {bad_option, Options}}.

start_on(Switch) ->
    case whereis(?MODULE) of
        undefined ->
            Pid = proc_lib:spawn(?MODULE, init, [Switch]),
            try register(?MODULE, Pid) of
                true -> {ok, Pid}
            catch
                error:badarg ->
                    exit(Pid, kill),
                    {error, already_started}
            end;
        _ ->
            {error, already_started}
    end.

-spec stop() -> ok.
stop() ->
    case whereis(?MODULE) of
        undefined ->
            ok;
        Pid ->
            Ref = monitor(process, Pid),
            Pid ! stop,
            receive
                {'DOWN', Ref, process, Pid, _} -> ok
            end
    end.

%% @doc The switch evum:start/0,1 VMs join, if any.
-spec switch() -> evum_switch:switch() | undefined.
switch() ->
    case whereis(?MODULE) of
        undefined ->
            undefined;
        Pid ->
            Ref = monitor(process, Pid),
            Pid ! {switch, self(), Ref},
            receive
                {Ref, Switch} ->
                    demonitor(Ref, [flush]),
                    Switch;
                {'DOWN', Ref, process, Pid, _} ->
                    undefined
            end
    end.

%% @private
%% Lives as long as its switch: a stopped switch is no network to join.
init(Switch) ->
    Ref = monitor(process, Switch),
    loop(Switch, Ref).

loop(Switch, Ref) ->
    receive
        {switch, From, Tag} ->
            From ! {Tag, Switch},
            loop(Switch, Ref);
        {'DOWN', Ref, process, _, _} ->
            ok;
        stop ->
            ok
    end.
