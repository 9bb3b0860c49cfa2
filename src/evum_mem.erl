%% @private
%% Guest memory: its bounds, and what the running VMs have been promised.
%%
%% A VM's `mem' is at least ?MIN_MB and at most the host's physical memory
%% (MemTotal): below, UML refuses to start (under 13 MB) or evum's guest
%% dies in its boot ("System is deadlocked on memory": half the boots at
%% 16 MB, all at 15); above, it is no machine this host could be.
%%
%% Admission: every VM of this node is promised its whole `mem', and the
%% promises together may not exceed the host's MemTotal less `mem_reserve'
%% (an application setting, MB; 1024 by default: the host's and the BEAM's
%% own). A guest touches only part of its memory, and UML allocates it
%% only as it is touched, so a host can run more than this rule admits:
%% `{overcommit, true}' lets a VM past the check (its memory is still
%% counted). The rule counts this node's VMs only, not other programs' or
%% other BEAMs': it bounds what evum itself promises, simply and the same
%% on every call, where MemAvailable would change with the host's page
%% cache from one call to the next.
%%
%% A VM's process is admitted when it is asked to boot, and its promise is
%% released when that process ends, however it ends: by the process itself
%% as it terminates (so that when evm:stop/1 returns the memory is free),
%% else (killed) by a monitor.
-module(evum_mem).
-behaviour(gen_server).

-export([start_link/0, admit/2, release/0, committed/0, host_mb/0, limit_mb/0, min_mb/0, default_mb/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

%% The least `mem' evum starts a guest with, in MB: its guest booted at 17
%% MB in 10 of 10 boots (2 MB free), at 16 in 5 of 10, at 15 in none.
-define(MIN_MB, 20).
%% A guest's memory when no `mem' is given (evum_core's DEFAULT_MEM).
-define(DEFAULT_MB, 64).
%% MB of the host's memory evum promises to no VM, by default.
-define(DEFAULT_RESERVE_MB, 1024).

-record(state, {
    %% Each admitted VM's process: its promised MB and its monitor.
    vms = #{} :: #{pid() => {pos_integer(), reference()}},
    committed = 0 :: non_neg_integer()
}).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The least guest memory evum starts, in MB.
-spec min_mb() -> pos_integer().
min_mb() -> ?MIN_MB.

%% @doc A guest's memory when its options give none, in MB.
-spec default_mb() -> pos_integer().
default_mb() -> ?DEFAULT_MB.

%% @doc The host's physical memory (MemTotal), in MB, or `undefined' where
%% /proc/meminfo cannot be read. Read once: it does not change, and a
%% node out of file descriptors must still be able to check a `mem'.
-spec host_mb() -> pos_integer() | undefined.
host_mb() ->
    case persistent_term:get({?MODULE, host_mb}, unread) of
        unread ->
            Mb = read_mem_total(),
            Mb =:= undefined orelse persistent_term:put({?MODULE, host_mb}, Mb),
            Mb;
        Mb ->
            Mb
    end.

read_mem_total() ->
    case file:read_file("/proc/meminfo") of
        {ok, Text} ->
            case re:run(Text, "^MemTotal:\\s+([0-9]+) kB", [multiline, {capture, all_but_first, list}]) of
                {match, [Kb]} -> list_to_integer(Kb) div 1024;
                nomatch -> undefined
            end;
        {error, _} ->
            undefined
    end.

%% @doc What all VMs together may be promised, in MB: MemTotal less the
%% `mem_reserve' setting.
-spec limit_mb() -> non_neg_integer() | infinity.
limit_mb() ->
    case host_mb() of
        undefined -> infinity;
        Host -> max(0, Host - reserve_mb())
    end.

reserve_mb() ->
    case application:get_env(evum, mem_reserve, ?DEFAULT_RESERVE_MB) of
        Mb when is_integer(Mb), Mb >= 0 -> Mb;
        _ -> ?DEFAULT_RESERVE_MB
    end.

%% @doc Promises `Mb' to the calling VM process for as long as it lives, if
%% the promises together stay within limit_mb/0 or `Overcommit' is true.
-spec admit(pos_integer(), boolean()) ->
    ok | {error, {insufficient_memory, #{asked := pos_integer(), available := non_neg_integer()}}}.
admit(Mb, Overcommit) ->
    gen_server:call(?MODULE, {admit, self(), Mb, Overcommit}, infinity).

%% @doc Releases what the calling VM process was promised, if anything.
-spec release() -> ok.
release() ->
    gen_server:call(?MODULE, {release, self()}, infinity).

%% @doc MB promised to the VMs running now.
-spec committed() -> non_neg_integer().
committed() ->
    gen_server:call(?MODULE, committed).

init([]) ->
    {ok, #state{}}.

handle_call({admit, Pid, Mb, Overcommit}, _From, #state{vms = Vms, committed = Committed} = S) ->
    Available =
        case limit_mb() of
            infinity -> infinity;
            Limit -> max(0, Limit - Committed)
        end,
    case Overcommit orelse Available =:= infinity orelse Mb =< Available of
        true ->
            Monitor = erlang:monitor(process, Pid),
            {reply, ok, S#state{vms = Vms#{Pid => {Mb, Monitor}}, committed = Committed + Mb}};
        false ->
            {reply, {error, {insufficient_memory, #{asked => Mb, available => Available}}}, S}
    end;
handle_call({release, Pid}, _From, S) ->
    {reply, ok, forget(Pid, S)};
handle_call(committed, _From, #state{committed = Committed} = S) ->
    {reply, Committed, S}.

handle_cast(_Msg, S) ->
    {noreply, S}.

handle_info({'DOWN', _, process, Pid, _}, S) ->
    {noreply, forget(Pid, S)};
handle_info(_Msg, S) ->
    {noreply, S}.

forget(Pid, #state{vms = Vms, committed = Committed} = S) ->
    case maps:take(Pid, Vms) of
        {{Mb, Monitor}, Rest} ->
            erlang:demonitor(Monitor, [flush]),
            S#state{vms = Rest, committed = Committed - Mb};
        error ->
            S
    end.
