%% @private
%% One evum_vm gen_server per VM. They are temporary: a VM that ends is not
%% restarted behind its owner's back.
-module(evum_vm_sup).
-behaviour(supervisor).

-export([start_link/0, start_vm/2]).
-export([init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec start_vm(pid(), evum_vm:config()) -> {ok, pid()} | {error, term()}.
start_vm(Owner, Config) ->
    supervisor:start_child(?MODULE, [Owner, Config]).

init([]) ->
    Flags = #{strategy => simple_one_for_one, intensity => 0, period => 1},
    Child = #{
        id => evum_vm,
        start => {evum_vm, start_link, []},
        restart => temporary,
        %% Long enough for mconsole halt, then SIGTERM, then SIGKILL.
        shutdown => 10000
    },
    {ok, {Flags, [Child]}}.
