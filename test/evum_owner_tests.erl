%% Who a VM belongs to and who hears from it: evum:send/2 answers any caller
%% with its own line's echo, evum:give_away/2 and `{owner, Pid}' move the
%% console, a supervisor restarts a VM as any child, and a VM started from
%% the Erlang shell survives the shell's exceptions.
-module(evum_owner_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 60000).

owner_test_() ->
    {setup, fun() -> {ok, _} = application:ensure_all_started(evum) end, fun(_) -> ok end, [
        {timeout, 120, {T, fun() -> ?MODULE:F() end}}
     || {T, F} <- [
            {"send returns the echo of its own line, to any caller", send_echo},
            {"give_away and {owner, Pid} move the console and the VM's life", give_away},
            {"a VM under a supervisor: restarted after exit(Vm, kill), stopped with it", supervised},
            {"a VM started from the shell survives an exception; application:stop tells its owner", shell}
        ]
    ]}.

%% Every message waiting, after 300 ms of quiet.
mailbox() ->
    receive
        M -> [M | mailbox()]
    after 300 -> []
    end.

%% Waits until the VM's prompt has come (the boot's lines with it).
settle(Vm) ->
    {ok, 0, _} = evum:cmd(Vm, "true"),
    mailbox().

send_echo() ->
    {ok, A} = evm:create([{label, own_a}, {timeout, ?BOOT}]),
    {ok, B} = evm:create([{label, own_b}, {timeout, ?BOOT}]),
    settle(A),
    settle(B),
    %% Typed into A while B prints: the echo is A's line, from A.
    ok = evum:puts(B, "echo from-b"),
    ?assertEqual(<<"hostname">>, evum:send(A, "hostname")),
    Later = mailbox(),
    ?assert(lists:member(<<"evm">>, Later), Later),
    ?assert(lists:member(<<"from-b">>, Later), Later),
    %% The echo came back once, to the caller, and is not in the mailbox too.
    ?assertNot(lists:member(<<"hostname">>, Later), Later),
    %% Another process gets its own echo; the output still goes to the owner.
    Self = self(),
    spawn(fun() -> Self ! {other, evum:send(A, "echo other-caller")} end),
    ?assertEqual({other, <<"echo other-caller">>}, receive {other, _} = R -> R after 10000 -> none end),
    ?assert(lists:member(<<"other-caller">>, mailbox())),
    %% A line the terminal does not echo times out, and leaves nothing behind.
    ok = evum:puts(A, "stty -echo"),
    mailbox(),
    ?assertEqual(timeout, evum:send(A, "true", 500)),
    ok = evum:puts(A, "stty echo"),
    mailbox(),
    ?assertEqual(<<"echo back">>, evum:send(A, "echo back")),
    [ok = evm:stop(Vm) || Vm <- [A, B]],
    ?assertEqual({error, not_running}, evum:send(A, "hostname")).

give_away() ->
    Self = self(),
    Keeper = spawn(fun() -> keeper(Self, []) end),
    {ok, Vm} = evm:create([{label, own_given}, {owner, Keeper}, {timeout, ?BOOT}]),
    ?assertMatch(#{owner := Keeper}, evum:info(Vm)),
    ok = evum:puts(Vm, "echo to-keeper"),
    timer:sleep(500),
    ?assert(lists:member(<<"to-keeper">>, lines_of(Keeper))),
    ?assertNot(lists:member(<<"to-keeper">>, mailbox())),
    %% Back to this process: its lines come here now.
    ok = evum:give_away(Vm, self()),
    ok = evum:puts(Vm, "echo to-me"),
    timer:sleep(500),
    ?assert(lists:member(<<"to-me">>, mailbox())),
    ?assertNot(lists:member(<<"to-me">>, lines_of(Keeper))),
    %% Given to the keeper again, the VM lives while the keeper does.
    ok = evum:give_away(Vm, Keeper),
    Dead = dead(),
    ?assertEqual({error, {not_alive, Dead}}, evum:give_away(Vm, Dead)),
    Ref = monitor(process, Vm),
    exit(Keeper, kill),
    receive
        {'DOWN', Ref, process, Vm, _} -> ok
    after 30000 -> error(vm_outlived_its_owner)
    end,
    %% No owner at all: the console goes nowhere.
    {ok, Quiet} = evm:create([{owner, none}, {timeout, ?BOOT}]),
    ok = evum:puts(Quiet, "echo nobody"),
    ?assertEqual([], mailbox()),
    ok = evm:stop(Quiet).

keeper(Parent, Lines) ->
    receive
        {lines, From} ->
            From ! {lines, self(), lists:reverse(Lines)},
            keeper(Parent, Lines);
        Line when is_binary(Line) ->
            keeper(Parent, [Line | Lines]);
        _ ->
            keeper(Parent, Lines)
    end.

lines_of(Keeper) ->
    Keeper ! {lines, self()},
    receive
        {lines, Keeper, Lines} -> Lines
    after 5000 -> error(keeper_silent)
    end.

dead() ->
    evum_api_errors_tests:dead().

%% A one_for_one supervisor with one VM child; `init/1' below.
supervised() ->
    process_flag(trap_exit, true),
    {ok, Sup} = supervisor:start_link(?MODULE, [evm:child_spec([{label, own_app_vm}, {timeout, ?BOOT}])]),
    [{own_app_vm, First, worker, _}] = supervisor:which_children(Sup),
    ?assertEqual(First, whereis(own_app_vm)),
    %% The supervisor is sent nothing (the console goes nowhere).
    #{os_pid := OsPid1} = evum:info(First),
    exit(First, kill),
    Second = wait_restarted(Sup, First, 60000),
    ?assertEqual(Second, whereis(own_app_vm)),
    ?assertMatch({ok, 0, <<"evm\n">>}, evum:cmd(own_app_vm, "hostname")),
    ?assertNot(os_pid_alive(OsPid1)),
    {messages, SupMessages} = process_info(Sup, messages),
    ?assertEqual([], SupMessages),
    %% Shutting the supervisor down stops the VM with it.
    #{os_pid := OsPid2} = evum:info(Second),
    Ref = monitor(process, Sup),
    exit(Sup, shutdown),
    receive
        {'DOWN', Ref, process, Sup, _} -> ok
    after 30000 -> error(supervisor_stuck)
    end,
    ?assertEqual(undefined, whereis(own_app_vm)),
    ?assertNot(os_pid_alive(OsPid2)).

init(Children) ->
    {ok, {#{strategy => one_for_one, intensity => 5, period => 60}, Children}}.

wait_restarted(Sup, Old, Ms) when Ms > 0 ->
    case supervisor:which_children(Sup) of
        [{_, New, _, _}] when is_pid(New), New =/= Old -> New;
        _ ->
            timer:sleep(100),
            wait_restarted(Sup, Old, Ms - 100)
    end;
wait_restarted(_Sup, _Old, _Ms) ->
    error(not_restarted).

os_pid_alive(OsPid) ->
    filelib:is_dir("/proc/" ++ integer_to_list(OsPid)).

%% An interactive `erl' shell as a user types into it: a VM created, an
%% exception (a badmatch on a second create of the same label), then the VM
%% answers still; and application:stop(evum) tells the shell it ended.
shell() ->
    Ebin = filename:dirname(code:which(evm)),
    Typed = [
        "{ok, Ref} = evm:create([{label, own_shell}]).\n",
        "{ok, Ref} = evm:create([{label, own_shell}]).\n",
        "timer:sleep(500), evum:cmd(own_shell, \"echo survived\").\n",
        "flush().\n",
        "application:stop(evum), flush().\n",
        "halt().\n"
    ],
    Output = evum_tests:erl_session(Ebin, Typed),
    [
        ?assertMatch({_, _}, binary:match(Output, Want), {Want, Output})
     || Want <- [
            <<"{error,{label_in_use,own_shell}}">>,
            <<"{ok,0,<<\"survived\\n\">>}">>,
            <<"{exit,shutdown}">>
        ]
    ].
