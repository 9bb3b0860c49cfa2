%% The console of a guest that writes without end to an owner that does not
%% read: evum stops reading it at the owner's backlog, so the owner's
%% mailbox and the BEAM's memory stay bounded, and lets it go again when
%% the owner catches up; other guests go on meanwhile.
-module(evum_console_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

console_test_() ->
    {setup, fun() -> {ok, _} = application:ensure_all_started(evum) end, fun(_) -> ok end, [
        {timeout, 120, {"a guest running yes cannot fill its owner's mailbox", fun backlog/0}},
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
    ?assert(evum_command_tests:rss_mb() - Before < 100),
    ?assertEqual({ok, 0, <<"up\n">>}, evum:cmd(Other, "echo up")),
    %% Caught up: the guest's output flows again.
    evum_tests:flush(),
    timer:sleep(1000),
    ?assert(waiting() > 1000),
    ok = evm:stop(Vm),
    ok = evm:stop(Other),
    evum_tests:flush().

bad_backlog() ->
    [
        ?assertEqual({error, {bad_option, {console_backlog, Bad}}}, evm:create([{console_backlog, Bad}]))
     || Bad <- [0, -5, lots]
    ],
    %% Labels become atoms: a too long one is a bad option, not system_limit.
    Long = lists:duplicate(300, $a),
    ?assertEqual({error, {bad_option, {label, list_to_binary(Long)}}}, evm:create([{label, Long}])),
    ?assertEqual({error, {bad_option, {label, <<>>}}}, evm:create([{label, ""}])).
