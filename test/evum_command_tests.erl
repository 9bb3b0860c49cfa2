%% The command channel (evum:cmd/2,3) under bad input from either side: a
%% guest that claims or sends more output than evum keeps, commands of any
%% bytes, too long or timed out. Each ends in an answer, the BEAM's memory
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
                {"output over 16 MiB is an error, and the channel goes on", output_too_large},
                {"commands of any bytes run; NUL and over-long ones are refused", command_bytes},
                {"a timed-out command, then others, all answered in turn", after_timeout}
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
    %% Just under the limit is kept whole.
    {ok, 0, Big} = evum:cmd(Vm, "head -c 16777216 /dev/zero", 60000),
    ?assertEqual(16777216, byte_size(Big)).

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
