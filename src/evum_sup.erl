%% @private
%% The application's top: the network address book, the boot gate, the
%% VMs' memory ledger and the VMs' supervisor (started last, so stopped
%% first: every VM has released its memory before the ledger goes).
-module(evum_sup).
-behaviour(supervisor).

-export([start_link/0]).
-export([init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    Flags = #{strategy => one_for_one, intensity => 5, period => 10},
    Children = [
        #{id => evum_net, start => {evum_net, start_link, []}},
        #{id => evum_boot_gate, start => {evum_boot_gate, start_link, []}},
        #{id => evum_mem, start => {evum_mem, start_link, []}},
        #{id => evum_vm_sup, start => {evum_vm_sup, start_link, []}, type => supervisor, shutdown => infinity}
    ],
    {ok, {Flags, Children}}.
