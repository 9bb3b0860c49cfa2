%% The console of a guest that writes without end to an owner that does not
%% read: at the owner's backlog evum stops reading it (hold, the default)
%% or reads on and drops its lines, counting them (drop), so the owner's
%% mailbox and the BEAM's memory stay bounded; it delivers again when the
%% owner catches up; other guests, and the guest's own commands, go on
%% meanwhile.
-module(evum_console_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

console_test_() ->
    {setup, fun() -> {ok, _} = application:ensure_all_started(evum) end, fun(_) -> ok end, [
        {timeout, 120, {"a guest running yes cannot fill its owner's mailbox", fun backlog/0}},
        {timeout, 120, {"with console_overflow drop, yes runs on and its lines are counted", fun drop/0}},
        {timeout, 60, {"bad backlogs and labels are bad options", fun bad_backlog/0}}
    ]}.

waiting() ->
    {message_queue_len, N} = process_info(self(), message_queue_len),
    N.

backlog() ->
    {ok, Other} = evm:create([]),
    {ok, Vm} = evm:create([{console_backlog, 2000}]),
    Before = evum_command_tests:rss_mb(),
    ok = evum:puts(Vm, "yes"),
    timer:sleep(2000),
    Early = waiting(),
    timer:sleep(2000),
    Late = waiting(),
    %% Held: a pipe's worth of lines at most past the backlog (64 KB of
    %% "y"), and no more coming.
    ?assert(Early > 2000),
    ?assert(Late < 40000),
    ?assert(Late - Early < 2000),
    ?debugFmt("hold: waiting ~b then ~b", [Early, Late]),
    ?assert(evum_command_tests:rss_mb() - Before < 100),
    ?assertEqual({ok, 0, <<"up\n">>}, evum:cmd(Other, "echo up")),
    %% Held, not dropped: nothing is lost, and the guest's commands run on
    %% their own serial line.
    ?assertMatch(#{console_dropped := 0}, evum:info(Vm)),
    ?assertEqual({ok, 0, <<"up\n">>}, evum:cmd(Vm, "echo up")),
    %% Caught up: the guest's output flows again.
    evum_tests:flush(),
    timer:sleep(1000),
    ?assert(waiting() > 1000),
    ok = evm:stop(Vm),
    ok = evm:stop(Other),
    evum_tests:flush().

drop() ->
    {ok, Vm} = evm:create([{console_backlog, 2000}, {console_overflow, drop}]),
    evum_tests:flush(),
    Before = evum_command_tests:rss_mb(),
    ok = evum:puts(Vm, "yes"),
    timer:sleep(2000),
    {Early, #{console_dropped := DroppedEarly}} = {waiting(), evum:info(Vm)},
    timer:sleep(2000),
    {Late, #{console_dropped := DroppedLate}} = {waiting(), evum:info(Vm)},
    Rss = evum_command_tests:rss_mb() - Before,
    {Micros, Up} = timer:tc(fun() -> evum:cmd(Vm, "echo up") end),
    ?debugFmt("drop: waiting ~b then ~b, dropped ~b then ~b, RSS +~b MB, a command in ~b ms", [
        Early, Late, DroppedEarly, DroppedLate, Rss, Micros div 1000
    ]),
    %% The backlog and what came while the VM's process looked (it is told
    %% every 1000 lines): no more, and no pipe's worth either, as a hold has.
    ?assert(Early > 2000),
    ?assert(Late < 10000),
    ?assert(Late - Early < 2000),
    ?assert(Rss < 100),
    %% The guest was not held: it went on writing, and evum on reading.
    ?assert(DroppedEarly > 0),
    ?assert(DroppedLate - DroppedEarly > 10000),
    ?assertEqual({ok, 0, <<"up\n">>}, Up),
    ?assert(Micros < 5000000),
    %% Caught up: the owner hears how many lines it missed, then lines again.
    evum_tests:flush(),
    Missed =
        receive
            {evum, Vm, {console_dropped, N}} -> N
        after 5000 -> error(no_console_dropped)
        end,
    #{console_dropped := Total} = evum:info(Vm),
    ?assert(Missed > 0 andalso Missed =< Total),
    receive
        <<"y">> -> ok
    after 5000 -> error(no_lines_after_drop)
    end,
    ok = evm:stop(Vm),
    evum_tests:flush().

bad_backlog() ->
    [
        ?assertEqual({error, {bad_option, {console_backlog, Bad}}}, evm:create([{console_backlog, Bad}]))
     || Bad <- [0, -5, lots]
    ],
    [
        ?assertEqual({error, {bad_option, {console_overflow, Bad}}}, evm:create([{console_overflow, Bad}]))
     || Bad <- [block, 1, "drop"]
    ],
    %% Labels become atoms: a too long one is a bad option, not system_limit.
    Long = lists:duplicate(300, $a),
    ?assertEqual({error, {bad_option, {label, list_to_binary(Long)}}}, evm:create([{label, Long}])),
    ?assertEqual({error, {bad_option, {label, <<>>}}}, evm:create([{label, ""}])).
