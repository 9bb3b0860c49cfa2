%% @private
-module(evum_app).
-behaviour(application).

-export([start/2, stop/1]).

start(_Type, _Args) ->
    %% The host ids VMs and switches run as (when evum is root): Count ids
    %% from First, none of which a host user or group may have.
    {First, Count} = application:get_env(evum, vm_ids, {16#70000000, 65536}),
    case evum_nif:jail_ids(First, Count) of
        ok ->
            evum_disk:reclaim({First, Count}),
            evum_sup:start_link();
        {error, Reason} -> {error, {vm_ids, Reason}}
    end.

stop(_State) ->
    ok.
