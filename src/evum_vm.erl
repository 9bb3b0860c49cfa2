%% @doc The process that is a VM. One per VM, under evum_vm_sup; evm:create/1
%% and evum:start/0,1 start it and hand its pid to the caller, who is the
%% VM's owner.
%%
%% Messages its owner receives (see the README for the full list):
%% <ul>
%% <li>each console line, as a binary, or `{evum, Vm, {console, Line}}' for a
%%   VM started with `tagged';</li>
%% <li>`{evum, Vm, {console_dropped, N}}' when, with `{console_overflow,
%%   drop}', N lines were dropped while the owner was behind, as delivery
%%   resumes;</li>
%% <li>`{evum, Vm, {exit, How}}' when the guest has ended, with How
%%   `{exit_status, N}' or `{signal, Name}'.</li>
%% </ul>
%% The VM stops when its owner exits. It holds the NIF resource of the VM, so
%% even `exit(Vm, kill)' kills the UML process: the resource's destructor does.
-module(evum_vm).
-behaviour(gen_server).

-export([start_link/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([config/0]).

-type config() :: #{
    label := atom() | undefined,
    kernel := binary(),
    boot := [evum_opts:nif_option()],
    umid := binary(),
    uml_dir := binary(),
    groups := [non_neg_integer()],
    tagged := boolean(),
    console_backlog => pos_integer() | infinity,
    console_overflow => hold | drop,
    switch => pid() | atom() | undefined,
    %% The guest's memory in MB, promised to it while this process lives
    %% (see evum_mem), and whether it may pass the host's limit.
    mem_mb => pos_integer(),
    overcommit => boolean(),
    boot_timeout := timeout()
}.

-record(state, {
    %% The NIF resource; dropping it kills the VM.
    vm :: term(),
    %% What to start, until the VM is started.
    config :: evum_vm:config(),
    owner :: pid(),
    owner_monitor :: reference(),
    %% The Erlang shell whose evaluator the owner is, if it is one: the
    %% shell replaces its evaluator after an exception, and the VM then
    %% goes to the new one instead of stopping.
    shell :: pid() | undefined,
    %% The process that linked itself to the VM (evm:start_link/1's caller,
    %% a supervisor): its exit stops the VM, as a parent's does.
    linked_to :: pid() | undefined,
    label :: atom() | undefined,
    tagged :: boolean(),
    %% booting -> ready -> stopping -> exited
    phase = booting :: booting | ready | stopping | exited,
    %% The caller of boot and callers of stop, answered when the phase changes.
    waiting_ready = [] :: [gen_server:from()],
    waiting_exit = [] :: [gen_server:from()],
    %% Commands whose callers wait: Id => {From, Timer} (no timer for
    %% an infinite timeout).
    commands = #{} :: #{non_neg_integer() => {gen_server:from(), reference() | undefined}},
    %% Callers of evum:send/2,3 waiting for their line's echo: Tag =>
    %% {From, Timer}.
    echoes = #{} :: #{pos_integer() => {gen_server:from(), reference() | undefined}},
    %% The command the guest's loop runs now (one at a time: the serial line
    %% holds little, and what overflows it is lost), and those waiting, each
    %% with the most output it may return.
    running :: undefined | non_neg_integer(),
    %% A reboot asked through evum:reboot/1 is under way: commands wait for
    %% the new boot's command loop, not the old one's last moments.
    rebooting = false :: boolean(),
    queued = queue:new() :: queue:queue({non_neg_integer(), binary(), non_neg_integer()}),
    %% The most messages the owner may have waiting before the console is
    %% paused, what a pause does (hold: the console is no longer read and
    %% the guest's output waits; drop: its lines are counted and lost), and
    %% whether it is paused.
    backlog :: pos_integer() | infinity,
    overflow :: hold | drop,
    console_paused = false :: boolean(),
    next_id = 1 :: pos_integer(),
    exit :: undefined | term(),
    stop_requested = false :: boolean(),
    %% The step of a stop under way: sync -> halt -> sigterm -> sigkill.
    stop_step :: undefined | sync | halt | sigterm | sigkill
}).

%% How long each step of a stop may take before the next, harder one.
-define(SYNC_GRACE, 5000).
-define(HALT_GRACE, 2000).
-define(TERM_GRACE, 2000).
-define(KILL_GRACE, 5000).
%% The command id of a stop's sync; users' commands count from 1.
-define(SYNC_ID, 0).
%% The longest command, in bytes: its request (in base64 if need be) must
%% fit the guest's 4 KB terminal buffer, or the terminal line loses bytes.
%% Longer ones are refused, not cut.
-define(MAX_COMMAND, 2048).
%% Commands that may wait for the guest's command loop.
-define(MAX_QUEUED, 64).
%% The default `console_backlog'.
-define(CONSOLE_BACKLOG, 10000).
%% How often a paused console looks whether its owner has caught up.
-define(BACKLOG_CHECK, 50).
%% How long a VM whose owner was a shell's evaluator waits for the shell's
%% next one: tries, and ms between them.
-define(ADOPT_TRIES, 50).
-define(ADOPT_EVERY, 20).

-spec start_link(pid(), config()) -> {ok, pid()} | {error, term()}.
start_link(Owner, #{label := undefined} = Config) ->
    gen_server:start_link(?MODULE, {Owner, Config}, []);
start_link(Owner, #{label := Label} = Config) ->
    gen_server:start_link({local, Label}, ?MODULE, {Owner, Config}, []).

init({Owner, Config}) ->
    process_flag(trap_exit, true),
    #{tagged := Tagged, label := Label} = Config,
    Backlog = maps:get(console_backlog, Config, ?CONSOLE_BACKLOG),
    Overflow = maps:get(console_overflow, Config, hold),
    {ok,
        owned_by(Owner, #state{
            label = Label, tagged = Tagged, config = Config, backlog = Backlog, overflow = Overflow
        })}.

%% Makes Pid the VM's owner: it is monitored (the VM stops when it ends,
%% unless it was a shell's evaluator) and gets the console from now on.
%% With no owner (`none') this process takes the console, and drops it.
owned_by(none, S) ->
    owned_by(self(), S);
owned_by(Pid, #state{owner_monitor = Old, vm = Vm} = S) ->
    Old =:= undefined orelse demonitor(Old, [flush]),
    Vm =:= undefined orelse evum_nif:vm_set_owner(Vm, Pid),
    Monitor =
        case Pid =:= self() of
            true -> undefined;
            false -> monitor(process, Pid)
        end,
    S#state{owner = Pid, owner_monitor = Monitor, shell = shell_of(Pid)}.

%% The shell whose evaluator Pid is, or undefined. The shell's I/O server
%% (its group leader, a `group' or `user' process) keeps the shell's pid
%% in its dictionary as `shell', and the shell keeps its evaluator's as
%% `evaluator' (shell:whereis_evaluator/1 reads that).
shell_of(Pid) ->
    try
        {group_leader, Io} = process_info(Pid, group_leader),
        {dictionary, Dict} = process_info(Io, dictionary),
        {shell, Shell} = lists:keyfind(shell, 1, Dict),
        Pid = shell:whereis_evaluator(Shell),
        Shell
    catch
        _:_ -> undefined
    end.

%% The VM is started by the first call, not in init/1: a VM that cannot start
%% is the caller's error, answered as one, not a crash of this process; and
%% the supervisor is not held up while the kernel is forked. It boots when
%% evum_boot_gate gives it a turn, once the host's memory admits it: a VM
%% refused never waits for a turn.
handle_call(boot, From, #state{vm = undefined, waiting_ready = [], config = Config} = S) ->
    Mb = maps:get(mem_mb, Config, evum_mem:default_mb()),
    case evum_mem:admit(Mb, maps:get(overcommit, Config, false)) of
        ok ->
            evum_boot_gate:ask(),
            {noreply, S#state{waiting_ready = [From]}};
        {error, _} = Refused ->
            {stop, normal, Refused, S#state{phase = exited}}
    end;
handle_call(_Request, _From, #state{vm = undefined} = S) ->
    {reply, {error, booting}, S};
handle_call(Request, From, S) ->
    started_call(Request, From, S).

%% Calls to a VM whose kernel has been started.
started_call({write, Data}, _From, #state{vm = Vm, tagged = Tagged} = S) ->
    case evum_nif:vm_write(Vm, Data) of
        ok -> {reply, {ok, Tagged}, S};
        {error, _} = Error -> {reply, Error, S}
    end;
started_call({send, _, _}, _From, #state{phase = Phase} = S) when Phase =:= stopping; Phase =:= exited ->
    {reply, {error, not_running}, S};
started_call({send, Line, Timeout}, From, #state{vm = Vm, echoes = Echoes} = S) ->
    %% The terminal echoes the line as it was typed, up to its first newline.
    [Echo | _] = binary:split(Line, <<"\n">>),
    Tag = erlang:unique_integer([positive]),
    case evum_nif:vm_expect_echo(Vm, Echo, Tag) of
        ok ->
            case evum_nif:vm_write(Vm, <<Line/binary, "\n">>) of
                ok ->
                    Timer = timer(Timeout, {echo_timeout, Tag}),
                    {noreply, S#state{echoes = Echoes#{Tag => {From, Timer}}}};
                {error, _} = Error ->
                    evum_nif:vm_forget_echo(Vm, Tag),
                    {reply, Error, S}
            end;
        {error, _} = Error ->
            {reply, Error, S}
    end;
started_call(kill, _From, #state{phase = exited} = S) ->
    {reply, {error, not_running}, S};
started_call(kill, _From, #state{vm = Vm} = S) ->
    evum_nif:vm_signal(Vm, sigkill, true),
    {reply, ok, S};
started_call({link, Pid}, _From, S) ->
    link(Pid),
    {reply, ok, S#state{linked_to = Pid}};
started_call({give_away, Pid}, _From, #state{owner = Pid} = S) ->
    {reply, ok, S};
started_call({give_away, Pid}, _From, S) ->
    case is_process_alive(Pid) of
        true -> {reply, ok, owned_by(Pid, S)};
        false -> {reply, {error, {not_alive, Pid}}, S}
    end;
started_call({cmd, Command, _}, _From, #state{phase = ready} = S) when byte_size(Command) > ?MAX_COMMAND ->
    {reply, {error, {too_large, ?MAX_COMMAND}}, S};
started_call({cmd, Command, #{timeout := Timeout, max_output := MaxOutput}}, From, #state{phase = ready} = S) ->
    #state{next_id = Id, commands = Commands, queued = Queued} = S,
    case {binary:match(Command, <<0>>), queue:len(Queued) >= ?MAX_QUEUED} of
        {{_, _}, _} ->
            {reply, {error, {bad_command, contains_nul}}, S};
        {nomatch, true} ->
            {reply, {error, busy}, S};
        {nomatch, false} ->
            Waiting = S#state{
                next_id = Id + 1,
                commands = Commands#{Id => {From, cmd_timer(Timeout, Id)}},
                queued = queue:in({Id, Command, MaxOutput}, Queued)
            },
            {noreply, run_next(Waiting)}
    end;
started_call(reboot, _From, #state{phase = ready, vm = Vm} = S) ->
    case mconsole(Vm, <<"reboot">>) of
        {ok, _} = Ok -> {reply, Ok, S#state{rebooting = true}};
        {error, _} = Error -> {reply, Error, S}
    end;
started_call(reboot, _From, #state{phase = booting} = S) ->
    {reply, {error, booting}, S};
started_call(reboot, _From, S) ->
    {reply, {error, not_running}, S};
started_call({cmd, _, _}, _From, #state{phase = booting} = S) ->
    {reply, {error, booting}, S};
started_call({cmd, _, _}, _From, S) ->
    {reply, {error, not_running}, S};
started_call(info, _From, #state{vm = Vm, owner = Owner, label = Label, phase = Phase, config = Config} = S) ->
    Info = evum_nif:vm_info(Vm),
    {reply, Info#{owner => Owner, label => Label, phase => Phase, switch => maps:get(switch, Config, undefined)}, S};
started_call(stop, _From, #state{phase = exited} = S) ->
    {reply, ok, S};
started_call(stop, From, #state{waiting_exit = W} = S) ->
    {noreply, begin_stop(S#state{waiting_exit = [From | W], stop_requested = true})};
started_call(_Request, _From, S) ->
    {reply, {error, unknown_request}, S}.

handle_cast(_Msg, S) ->
    {noreply, S}.

handle_info({evum_boot_gate, go}, #state{vm = undefined, phase = booting} = S) ->
    start(S);
handle_info({evum_boot_gate, go}, S) ->
    %% A stop came first.
    evum_boot_gate:done(),
    {noreply, S};
handle_info({evum_ctl, ready}, #state{phase = booting, waiting_ready = W} = S) ->
    evum_boot_gate:done(),
    [gen_server:reply(From, ok) || From <- W],
    {noreply, S#state{phase = ready, waiting_ready = []}};
handle_info({evum_ctl, ready}, #state{running = Running} = S) ->
    %% After a reboot the command loop comes up again, and what the old one
    %% ran has no answer coming.
    Answered =
        case Running of
            undefined -> S;
            Id -> answer(Id, {error, rebooted}, S)
        end,
    {noreply, run_next(Answered#state{rebooting = false})};
handle_info(evum_console, S) ->
    {noreply, check_backlog(S)};
handle_info(check_backlog, #state{console_paused = true} = S) ->
    {noreply, check_backlog(S)};
handle_info({evum_ctl, {result, ?SYNC_ID, _, _}}, S) ->
    {noreply, stop_step(halt, S)};
handle_info({evum_ctl, {result, Id, Status, Output}}, S) ->
    {noreply, run_next(answer(Id, {ok, Status, Output}, S))};
handle_info({evum_ctl, {output_too_large, Id, Length}}, S) ->
    {noreply, run_next(answer(Id, {error, {output_too_large, Length}}, S))};
handle_info({evum_echo, Tag, Line}, #state{echoes = Echoes} = S) ->
    case maps:take(Tag, Echoes) of
        {{From, Timer}, Rest} ->
            cancel_timer(Timer),
            gen_server:reply(From, Line),
            {noreply, S#state{echoes = Rest}};
        error ->
            {noreply, S}
    end;
handle_info({echo_timeout, Tag}, #state{echoes = Echoes, vm = Vm} = S) ->
    case maps:take(Tag, Echoes) of
        {{From, _}, Rest} ->
            evum_nif:vm_forget_echo(Vm, Tag),
            gen_server:reply(From, timeout),
            {noreply, S#state{echoes = Rest}};
        error ->
            {noreply, S}
    end;
handle_info({cmd_timeout, Id}, #state{commands = Commands, queued = Queued} = S) ->
    case maps:take(Id, Commands) of
        {{From, _}, Rest} ->
            gen_server:reply(From, {error, timeout}),
            %% If it was still waiting its turn, it no longer takes a place.
            {noreply, S#state{commands = Rest, queued = queue:filter(fun({I, _, _}) -> I =/= Id end, Queued)}};
        error ->
            {noreply, S}
    end;
handle_info(boot_timeout, #state{phase = booting, waiting_ready = W, vm = Vm} = S) ->
    [gen_server:reply(From, {error, boot_timeout}) || From <- W],
    evum_nif:vm_signal(Vm, sigkill, true),
    {noreply, S#state{phase = stopping, waiting_ready = [], stop_requested = true}};
handle_info(boot_timeout, S) ->
    {noreply, S};
handle_info({evum_exit, How, Lines}, S) ->
    exited(How, Lines, S);
handle_info({stop_step, Step}, S) ->
    {noreply, stop_step(Step, S)};
handle_info({'DOWN', Ref, process, _, _}, #state{owner_monitor = Ref, shell = undefined} = S) ->
    {noreply, begin_stop(S#state{stop_requested = true})};
handle_info({'DOWN', Ref, process, Owner, _}, #state{owner_monitor = Ref, shell = Shell} = S) ->
    %% A shell's evaluator that died of an exception is replaced at once:
    %% the VM goes to the new one.
    self() ! {adopt_evaluator, Shell, Owner, ?ADOPT_TRIES},
    {noreply, S};
handle_info({'EXIT', Pid, Reason}, #state{linked_to = Pid} = S) ->
    %% Told to stop by its supervisor (or its linked caller ended): the
    %% guest is stopped in terminate/2.
    {stop, Reason, S};
handle_info({adopt_evaluator, Shell, Old, Tries}, #state{owner = Old} = S) ->
    case catch shell:whereis_evaluator(Shell) of
        New when is_pid(New), New =/= Old ->
            {noreply, owned_by(New, S)};
        _ when Tries > 0 ->
            erlang:send_after(?ADOPT_EVERY, self(), {adopt_evaluator, Shell, Old, Tries - 1}),
            {noreply, S};
        _ ->
            {noreply, begin_stop(S#state{stop_requested = true})}
    end;
handle_info(_Msg, S) ->
    {noreply, S}.

%% Starts the UML process; the boot's caller hears when the guest is up.
start(#state{owner = Owner, config = Config, waiting_ready = Waiting} = S) ->
    #{
        kernel := Kernel,
        boot := Boot,
        umid := Umid,
        uml_dir := UmlDir,
        groups := Groups,
        tagged := Tagged,
        boot_timeout := BootTimeout
    } = Config,
    %% The boot's time runs from before the start: a start that a busy host
    %% makes slow counts, and the guest's READY cannot come before it.
    erlang:send_after(BootTimeout, self(), boot_timeout),
    case evum_nif:vm_start(Owner, self(), Tagged, Kernel, Boot, Umid, UmlDir, Groups) of
        {ok, Vm} ->
            {noreply, S#state{vm = Vm}};
        {error, _} = Error ->
            [gen_server:reply(From, Error) || From <- Waiting],
            {stop, normal, S#state{phase = exited, waiting_ready = []}}
    end.

%% Pauses the console while the owner has more than `backlog' messages
%% waiting, and resumes it once the owner is down to half that: a guest
%% writing without end then waits on its console (hold) or has its lines
%% counted and lost (drop), and the owner's mailbox (and the BEAM's memory)
%% stays bounded.
check_backlog(#state{backlog = infinity} = S) ->
    S;
check_backlog(#state{owner = Owner, backlog = Backlog, console_paused = Paused, vm = Vm} = S) ->
    Waiting =
        case erlang:process_info(Owner, message_queue_len) of
            {message_queue_len, N} -> N;
            undefined -> 0
        end,
    Pause = Waiting > Backlog orelse (Paused andalso Waiting > Backlog div 2),
    Pause =/= Paused andalso evum_nif:vm_console_flow(Vm, console_flow(Pause, S#state.overflow)),
    Pause andalso erlang:send_after(?BACKLOG_CHECK, self(), check_backlog),
    S#state{console_paused = Pause}.

console_flow(false, _Overflow) -> deliver;
console_flow(true, Overflow) -> Overflow.

%% The timer of a command's timeout; none for `infinity'.
cmd_timer(Timeout, Id) -> timer(Timeout, {cmd_timeout, Id}).

%% A timer sending Msg to this process after Timeout; none for `infinity'.
timer(infinity, _Msg) -> undefined;
timer(Timeout, Msg) -> erlang:send_after(Timeout, self(), Msg).

cancel_timer(undefined) -> ok;
cancel_timer(Timer) -> erlang:cancel_timer(Timer).

%% Answers command Id's caller, if it still waits; the guest's loop is free
%% again if Id was what it ran.
answer(Id, Reply, #state{commands = Commands, running = Running} = S) ->
    Answered =
        case maps:take(Id, Commands) of
            {{From, Timer}, Rest} ->
                cancel_timer(Timer),
                gen_server:reply(From, Reply),
                S#state{commands = Rest};
            error ->
                %% Its caller timed out already, or the guest made it up.
                S
        end,
    case Running of
        Id -> Answered#state{running = undefined};
        _ -> Answered
    end.

%% Sends the next waiting command whose caller still waits, if the guest's
%% loop is free (and not about to go with a reboot).
run_next(#state{running = undefined, rebooting = false, queued = Queued, commands = Commands, vm = Vm} = S) ->
    case queue:out(Queued) of
        {empty, _} ->
            S;
        {{value, {Id, _, _}}, Rest} when not is_map_key(Id, Commands) ->
            run_next(S#state{queued = Rest});
        {{value, {Id, Command, MaxOutput}}, Rest} ->
            case evum_nif:vm_run(Vm, Id, Command, MaxOutput) of
                ok ->
                    S#state{running = Id, queued = Rest};
                {error, _} = Error ->
                    run_next(answer(Id, Error, S#state{queued = Rest}))
            end
    end;
run_next(S) ->
    S.

%% Stops the guest as gently as it allows: a sync in the guest (so what it
%% wrote to its disks is on them), mconsole halt, then SIGTERM to the UML
%% process, then SIGKILL to all of it. Each step waits for the exit, or for
%% the step's grace time before the next.
begin_stop(#state{phase = Phase} = S) when Phase =:= stopping; Phase =:= exited ->
    S;
begin_stop(#state{vm = undefined} = S) ->
    self() ! {evum_exit, never_started, []},
    S#state{phase = stopping};
begin_stop(#state{phase = ready} = S) ->
    stop_step(sync, S#state{phase = stopping});
begin_stop(S) ->
    stop_step(halt, S#state{phase = stopping}).

%% Takes a stop to `Step' unless it is there or past it already (a step is
%% asked for by its predecessor's end and by its timer both).
stop_step(Step, #state{phase = stopping, stop_step = Current, vm = Vm} = S) ->
    Order = [undefined, sync, halt, sigterm, sigkill],
    case index(Step, Order) > index(Current, Order) of
        true ->
            run_stop_step(Step, Vm),
            S#state{stop_step = Step};
        false ->
            S
    end;
stop_step(_Step, S) ->
    S.

run_stop_step(sync, Vm) ->
    case evum_nif:vm_sync(Vm, ?SYNC_ID) of
        ok -> erlang:send_after(?SYNC_GRACE, self(), {stop_step, halt});
        _ -> self() ! {stop_step, halt}
    end;
run_stop_step(halt, Vm) ->
    case mconsole(Vm, <<"halt">>) of
        {ok, _} -> erlang:send_after(?HALT_GRACE, self(), {stop_step, sigterm});
        _ -> self() ! {stop_step, sigterm}
    end;
run_stop_step(sigterm, Vm) ->
    evum_nif:vm_signal(Vm, sigterm, false),
    erlang:send_after(?TERM_GRACE, self(), {stop_step, sigkill});
run_stop_step(sigkill, Vm) ->
    evum_nif:vm_signal(Vm, sigkill, true).

%% A request to the VM's own mconsole, answered within a second.
mconsole(Vm, Request) ->
    #{mconsole_socket := Socket} = evum_nif:vm_info(Vm),
    evum_nif:mconsole_request(Socket, Request, 1000).

index(X, List) -> length(lists:takewhile(fun(Y) -> Y =/= X end, List)).

exited(How, Lines, S) ->
    #state{owner = Owner, waiting_ready = WR, waiting_exit = WE, commands = Commands, echoes = Echoes} = S,
    Owner ! {evum, self(), {exit, How}},
    WR =:= [] orelse boot_failed(WR, How, Lines, S),
    [gen_server:reply(From, {error, {exited, How}}) || {From, _} <- maps:values(Commands) ++ maps:values(Echoes)],
    [gen_server:reply(From, ok) || From <- WE],
    Final = S#state{phase = exited, exit = How, waiting_ready = [], waiting_exit = [], commands = #{}, echoes = #{}},
    Reason =
        case {S#state.stop_requested, How} of
            {true, _} -> normal;
            {_, {exit_status, 0}} -> normal;
            _ -> {shutdown, How}
        end,
    {stop, Reason, Final}.

%% The guest died before it came up: its boot waiters hear why, in the
%% kernel's own last lines, or as a host problem with its fix when the lines
%% show one evum knows. A stop asked for during the boot is no failure.
boot_failed(Waiting, How, _Lines, #state{stop_requested = true}) ->
    [gen_server:reply(From, {error, {exited, How}}) || From <- Waiting];
boot_failed(Waiting, How, Lines, #state{config = #{kernel := Kernel}}) ->
    Error =
        case host_problem(Lines) of
            {Problem, Fix} ->
                logger:error("evum: UML kernel ~ts cannot run on this host: ~ts; ~ts.~nIts last lines:~n~ts", [
                    Kernel, Problem, Fix, lists:join("\n", Lines)
                ]),
                {unsupported_host, Problem, Fix};
            none ->
                {boot_failed, How, Lines}
        end,
    [gen_server:reply(From, {error, Error}) || From <- Waiting].

%% Host incompatibilities a kernel's dying words name, with what fixes them.
host_problem(Lines) ->
    Known = [
        {<<"ptrace set fp regs failed">>,
            {<<"this UML kernel saves a fixed-size FPU state that this CPU's XSAVE area (AVX-512/AMX) does not fit">>,
                <<"use evum's own kernel (the default; `make deps` builds it)">>}}
    ],
    Found = [Answer || {Mark, Answer} <- Known, lists:any(fun(L) -> binary:match(L, Mark) =/= nomatch end, Lines)],
    case Found of
        [Answer | _] -> Answer;
        [] -> none
    end.

%% The guest's memory is free once its process is gone: given back here,
%% before the process's exit, so that whoever waits for that exit (evm:stop/1)
%% finds it free. (A killed process has it given back by the ledger's
%% monitor.)
terminate(Reason, S) ->
    stop_guest(Reason, S),
    tell_owner_stopped(Reason, S),
    catch evum_mem:release(),
    ok.

%% A VM stopped under its owner (evum's application stopped, its supervisor
%% shut it down): the owner hears of it as of any end.
tell_owner_stopped(_Reason, #state{phase = exited}) ->
    ok;
tell_owner_stopped(Reason, #state{owner = Owner}) ->
    How =
        case Reason of
            {shutdown, _} -> shutdown;
            Other -> Other
        end,
    Owner ! {evum, self(), {exit, How}}.

%% Shut down with the VM still running (supervisor shutdown, a crash): stop
%% it here and wait, so no VM outlives its process.
stop_guest(_Reason, #state{phase = exited}) ->
    ok;
stop_guest(_Reason, #state{vm = undefined}) ->
    ok;
stop_guest(_Reason, #state{vm = Vm}) ->
    %% mconsole halt first: SIGTERM alone can catch UML's kernel mid-way and
    %% end it in a panic, printed on the owner's console.
    Halted =
        case mconsole(Vm, <<"halt">>) of
            {ok, _} -> wait_exit(?HALT_GRACE);
            _ -> false
        end,
    Halted orelse begin
        evum_nif:vm_signal(Vm, sigterm, false),
        wait_exit(?TERM_GRACE) orelse begin
            evum_nif:vm_signal(Vm, sigkill, true),
            wait_exit(?KILL_GRACE)
        end
    end,
    ok.

%% Whether the guest's exit comes within Ms.
wait_exit(Ms) ->
    receive
        {evum_exit, _, _} -> true
    after Ms -> false
    end.
