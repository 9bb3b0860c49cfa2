%% @private
%% How many VMs boot at once. A boot keeps a host CPU busy for most of its
%% tens of milliseconds; a thousand started together would be a thousand
%% runnable host processes, among which the BEAM's own scheduler threads
%% wait their turn for seconds. So VMs take turns: at most `boot_concurrency'
%% (application setting; `auto' is two per host CPU) boot at a time, the
%% rest wait in order, and a VM's turn ends when its guest is up, or its
%% process ends, whichever comes first. Booted VMs are not counted: an
%% idle guest costs the host almost nothing.
%%
%% A VM asks with `ask/0' and is told `{evum_boot_gate, go}' when its turn
%% comes; it says `done/0' when its guest is up.
-module(evum_boot_gate).
-behaviour(gen_server).

-export([start_link/0, ask/0, done/0, limit/0, status/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-record(state, {
    %% VMs booting now: their monitors.
    booting = #{} :: #{pid() => reference()},
    %% VMs waiting for a turn, first come first.
    waiting = queue:new() :: queue:queue({pid(), reference()})
}).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Asks for a turn to boot: `{evum_boot_gate, go}' comes to the caller
%% when it has one.
-spec ask() -> ok.
ask() ->
    gen_server:cast(?MODULE, {ask, self()}).

%% @doc The caller's guest is up (or will not be): its turn is over.
-spec done() -> ok.
done() ->
    gen_server:cast(?MODULE, {done, self()}).

%% @doc How many VMs boot now, how many wait, and how many may boot at once.
-spec status() -> #{booting := non_neg_integer(), waiting := non_neg_integer(), limit := pos_integer()}.
status() ->
    gen_server:call(?MODULE, status).

%% @doc How many VMs may boot at once (read at every turn, so a changed
%% setting takes effect at once).
-spec limit() -> pos_integer().
limit() ->
    case application:get_env(evum, boot_concurrency, auto) of
        N when is_integer(N), N > 0 -> N;
        _ -> 2 * erlang:system_info(logical_processors_available)
    end.

init([]) ->
    {ok, #state{}}.

handle_call(status, _From, #state{booting = Booting, waiting = Waiting} = S) ->
    {reply, #{booting => map_size(Booting), waiting => queue:len(Waiting), limit => limit()}, S};
handle_call(_Request, _From, S) ->
    {reply, {error, unknown_request}, S}.

handle_cast({ask, Pid}, #state{waiting = Waiting} = S) ->
    {noreply, admit(S#state{waiting = queue:in({Pid, monitor(process, Pid)}, Waiting)})};
handle_cast({done, Pid}, S) ->
    {noreply, admit(forget(Pid, S))}.

handle_info({'DOWN', _, process, Pid, _}, S) ->
    {noreply, admit(forget(Pid, S))}.

%% Lets waiting VMs boot while there is room.
admit(#state{booting = Booting, waiting = Waiting} = S) ->
    case map_size(Booting) < limit() andalso queue:out(Waiting) of
        {{value, {Pid, Monitor}}, Rest} ->
            Pid ! {?MODULE, go},
            admit(S#state{booting = Booting#{Pid => Monitor}, waiting = Rest});
        _NoRoomOrNoneWaiting ->
            S
    end.

%% A VM that is up, or gone, whether it was booting or still waiting.
forget(Pid, #state{booting = Booting, waiting = Waiting} = S) ->
    case maps:take(Pid, Booting) of
        {Monitor, Rest} ->
            demonitor(Monitor, [flush]),
            S#state{booting = Rest};
        error ->
            {Gone, Kept} = lists:partition(fun({P, _}) -> P =:= Pid end, queue:to_list(Waiting)),
            [demonitor(M, [flush]) || {_, M} <- Gone],
            S#state{waiting = queue:from_list(Kept)}
    end.
