%% The command channel (evum:cmd/2,3) under bad input from either side: a
%% guest that claims or sends more output than evum keeps (16 MiB at most,
%% 4 MiB unless a command asks for more), commands of any bytes, too long
%% or timed out, bad options. Each ends in an answer, the BEAM's memory
%% stays flat, and the next command works.
-module(evum_command_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

command_test_() ->
    {setup, fun setup/0, fun cleanup/1, fun(Vm) ->
        [
            {timeout, 120, {T, fun() -> ?MODULE:F(Vm) end}}
         || {T, F} <- [
                {"a guest claiming a 100 GB result cannot grow the BEAM's memory", forged_length},
                {"output over the limit is an error, and the channel goes on; 16 MiB at most", output_too_large},
                {"output past a command's own limit is an error, never held in memory", max_output},
                {"cmd/3 takes a timeout or options; bad ones are errors, not crashes", cmd_options},
                {"commands of any bytes run; NUL and over-long ones are refused", command_bytes},
                {"a timed-out command, then others, all answered in turn", after_timeout},
                {"a program a command leaves writing its output cannot break the framing", left_writing}
            ]
        ]
    end}.

setup() ->
    {ok, _} = application:ensure_all_started(evum),
    {ok, Vm} = evm:create([]),
    Vm.

cleanup(Vm) ->
    evm:stop(Vm),
    evum_tests:flush().

%% The BEAM's resident memory (native memory too, which erlang:memory/0
%% does not see), in MB.
rss_mb() ->
    {ok, Status} = file:read_file("/proc/" ++ os:getpid() ++ "/status"),
    {match, [Kb]} = re:run(Status, "VmRSS:\\s+(\\d+) kB", [{capture, all_but_first, list}]),
    list_to_integer(Kb) div 1024.

%% The most the BEAM's resident memory grew, in MB, while Fun ran: the
%% peak (VmHWM, reset first), so memory taken and given back in between
%% counts too.
peak_growth_mb(Fun) ->
    ok = file:write_file("/proc/self/clear_refs", "5"),
    Before = status_kb("VmRSS"),
    Result = Fun(),
    {Result, (status_kb("VmHWM") - Before) / 1024}.

status_kb(Field) ->
    {ok, Status} = file:read_file("/proc/" ++ os:getpid() ++ "/status"),
    {match, [Kb]} = re:run(Status, Field ++ ":\\s+(\\d+) kB", [{capture, all_but_first, list}]),
    list_to_integer(Kb).

forged_length(Vm) ->
    Before = rss_mb(),
    %% Written to the command channel itself, past the loop's framing.
    Attack =
        "printf '\\001EVUM RESULT 999 0 100000000000\\n' >/dev/ttyS0; "
        "head -c 8000000 /dev/zero >/dev/ttyS0; echo after",
    ?assertEqual({ok, 0, <<"after\n">>}, evum:cmd(Vm, Attack, 60000)),
    ?assert(rss_mb() - Before < 40),
    ?assertEqual({ok, 0, <<"ok\n">>}, evum:cmd(Vm, "echo ok")).

output_too_large(Vm) ->
    Before = rss_mb(),
    ?assertEqual({error, {output_too_large, 17000000}}, evum:cmd(Vm, "head -c 17000000 /dev/zero", 60000)),
    ?assert(rss_mb() - Before < 40),
    %% Queued behind the rest of that output, then answered.
    ?assertEqual({ok, 0, <<"ok\n">>}, evum:cmd(Vm, "echo ok", 60000)),
    %% The ceiling itself is kept whole, when asked for.
    {ok, 0, Big} = evum:cmd(Vm, "head -c 16777216 /dev/zero", [{timeout, 60000}, {max_output, 16 bsl 20}]),
    ?assertEqual(16777216, byte_size(Big)).

max_output(Vm) ->
    Five = "head -c 5000000 /dev/zero",
    %% Over the default 4 MiB: refused at the result's header, and the
    %% guest's 5 MB read and thrown away, never held, not even for a moment.
    {TooLarge, Growth} = peak_growth_mb(fun() -> evum:cmd(Vm, Five, 60000) end),
    ?assertEqual({error, {output_too_large, 5000000}}, TooLarge),
    ?debugFmt("peak RSS growth for 5 MB over the limit: ~.1f MB", [Growth]),
    ?assert(Growth < 2),
    ?assertEqual({ok, 0, <<"ok\n">>}, evum:cmd(Vm, "echo ok")),
    %% The same command with a limit above its output: all of it. (Its peak,
    %% for comparison: what keeping the output costs.)
    {Kept, KeptGrowth} = peak_growth_mb(fun() -> evum:cmd(Vm, Five, [{max_output, 8 bsl 20}, {timeout, 60000}]) end),
    ?debugFmt("peak RSS growth for 5 MB kept: ~.1f MB", [KeptGrowth]),
    ?assertMatch({ok, 0, _}, Kept),
    {ok, 0, Zeros} = Kept,
    ?assertEqual(binary:copy(<<0>>, 5000000), Zeros),
    %% A limit is the command's own: the next one has the default again.
    ?assertEqual({error, {output_too_large, 5000000}}, evum:cmd(Vm, Five, 60000)),
    %% Exactly at the limit is kept; a byte over is not. A map works too.
    ?assertEqual({ok, 0, <<"1234">>}, evum:cmd(Vm, "printf 1234", #{max_output => 4})),
    ?assertEqual({error, {output_too_large, 5}}, evum:cmd(Vm, "printf 12345", #{max_output => 4})),
    ?assertEqual({ok, 0, <<>>}, evum:cmd(Vm, "true", [{max_output, 0}])),
    ?assertEqual({ok, 0, <<"ok\n">>}, evum:cmd(Vm, "echo ok")).

cmd_options(Vm) ->
    Bad = [
        {max_output, (16 bsl 20) + 1},
        {max_output, -1},
        {max_output, lots},
        {timeout, -5},
        {timeout, 1.5},
        {timeout, 1 bsl 40},
        {bogus, 1},
        bogus
    ],
    [?assertEqual({error, {bad_option, B}}, evum:cmd(Vm, "echo no", [B])) || B <- Bad],
    ?assertEqual({error, {bad_option, {timeout, -1}}}, evum:cmd(Vm, "echo no", -1)),
    ?assertEqual({error, {bad_option, soon}}, evum:cmd(Vm, "echo no", soon)),
    ?assertEqual({error, {bad_option, {max_output, huge}}}, evum:cmd(Vm, "echo no", #{max_output => huge})),
    %% None of that reached the VM; a timeout alone, or infinity, as ever.
    ?assertEqual({ok, 0, <<"a\n">>}, evum:cmd(Vm, "echo a", 5000)),
    ?assertEqual({ok, 0, <<"b\n">>}, evum:cmd(Vm, "echo b", infinity)),
    ?assertEqual({ok, 0, <<"c\n">>}, evum:cmd(Vm, "echo c", [{timeout, infinity}])),
    ?assertEqual({error, timeout}, evum:cmd(Vm, "sleep 1", [{timeout, 50}, {max_output, 10}])),
    ?assertEqual({ok, 0, <<"d\n">>}, evum:cmd(Vm, "echo d", [])).

command_bytes(Vm) ->
    %% Not UTF-8: the shell takes bytes as they are.
    ?assertEqual({ok, 0, <<"1\n">>}, evum:cmd(Vm, <<"printf '\xff' | wc -c">>)),
    ?assertEqual({ok, 0, <<255, 254>>}, evum:cmd(Vm, <<"printf '\xff\xfe'">>)),
    ?assertEqual({error, {bad_command, contains_nul}}, evum:cmd(Vm, <<"echo a", 0, "b">>)),
    %% The longest command is taken whole; one byte more is refused.
    Filler = fun(N) -> [": ", lists:duplicate(N - 11, $a), "; echo ok"] end,
    ?assertEqual(2048, iolist_size(Filler(2048))),
    ?assertEqual({ok, 0, <<"ok\n">>}, evum:cmd(Vm, Filler(2048))),
    ?assertEqual({ok, 0, <<255, "ok\n">>}, evum:cmd(Vm, [<<"printf '\xff'; ">>, Filler(2036)])),
    ?assertEqual({error, {too_large, 2048}}, evum:cmd(Vm, Filler(2049))),
    ?assertEqual({ok, 0, <<"ok\n">>}, evum:cmd(Vm, "echo ok")).

after_timeout(Vm) ->
    ?assertEqual({error, timeout}, evum:cmd(Vm, "sleep 2; echo late", 100)),
    %% Many callers at once: each waits its turn and gets its own answer.
    Self = self(),
    [spawn(fun() -> Self ! {N, evum:cmd(Vm, ["echo ", integer_to_list(N)], 30000)} end) || N <- lists:seq(1, 20)],
    [
        receive
            {N, Reply} -> ?assertEqual({ok, 0, iolist_to_binary([integer_to_list(N), "\n"])}, Reply)
        after 30000 -> error({no_answer, N})
        end
     || N <- lists:seq(1, 20)
    ].

%% The command's output file is still open in a program it started: the
%% result carries the bytes there when the command ended, exactly as many
%% as its header says, and the commands after it get their own, with none
%% of the program's noise in them.
left_writing(Vm) ->
    {ok, 0, Started} = evum:cmd(Vm, "(while :; do echo noise; done) & echo $! >/tmp/noisy.pid; echo started"),
    ?assertNotEqual(nomatch, binary:match(Started, <<"started\n">>)),
    ?assertEqual({ok, 0, <<>>}, evum:cmd(Vm, "sleep 0.2; kill $(cat /tmp/noisy.pid)")),
    ?assertEqual({ok, 0, <<"quiet\n">>}, evum:cmd(Vm, "echo quiet")).
