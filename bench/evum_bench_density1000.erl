%% @doc The density1000 benchmark (run by name only: it is expensive): 1000
%% VMs created at once, all at a prompt, the BEAM responsive throughout,
%% all stopped with nothing left. A sample of a few VMs first tells what
%% one VM needs; the host's limits and free memory are checked against
%% that, and the run is refused, naming the limit, where they would not
%% do. See bench/README.md.
-module(evum_bench_density1000).

-export([run/1]).

-import(evum_bench_lib, [env_int/2, header/1, evum_template/0, now_us/0, figure/5, timeout/1]).

-define(SAMPLE, 5).
%% Expected PSS per VM = the sample's times this: a guest's page cache and
%% slab grow a little while it runs.
-define(PSS_MARGIN, 1.25).
%% Memory left to the host and the BEAM, in MB.
-define(RESERVE_MB, 1024).

run(_Tmp) ->
    N = env_int("EVUM_BENCH_DENSITY1000_VMS", 1000),
    Idle = env_int("EVUM_BENCH_IDLE_MS", 3000),
    Cores = erlang:system_info(logical_processors_available),
    header(io_lib:format("density1000: ~b VMs created concurrently on ~b cores, the BEAM responsive throughout",
                         [N, Cores])),
    {ok, _} = application:ensure_all_started(evum),
    {_, _, _} = evum_template(),
    io:format("-- a sample of ~b VMs: what one VM needs --~n", [?SAMPLE]),
    Sample = evum_bench_density:fleet(?SAMPLE, #{idle => 1000}),
    ok = sample_ok(Sample),
    io:format("~n-- the host's limits for ~b VMs --~n", [N]),
    case [L || {L, _, _, false} <- limits(N, Sample)] of
        [] ->
            measure(N, Idle);
        Blocking ->
            io:format("~ndensity1000 REFUSED: not started, because of ~s (see the table above)~n",
                      [lists:join(", ", Blocking)]),
            ok
    end.

sample_ok(#{failed := [], not_ok := [], left := [], left_dirs := []}) -> ok;
sample_ok(S) -> error({sample_failed, maps:with([failed, not_ok, left, left_dirs], S)}).

measure(N, Idle) ->
    io:format("~n-- ~b VMs --~n", [N]),
    Tickers = [spawn_link(fun() -> tick(now_us(), {0, 0}, 0, 0) end)
               || _ <- lists:seq(1, erlang:system_info(schedulers_online))],
    Peer = start_peer_ticker(),
    T0 = now_us(),
    %% (The tickers are linked: they end with this node if the fleet fails.)
    R = evum_bench_density:fleet(N, #{idle => Idle, timeout => 900000}),
    Ticks = [stop_ticker(T) || T <- Tickers],
    PeerTicks = stop_peer_ticker(Peer),
    Total = (now_us() - T0) / 1.0e6,
    #{vms := Vms, wall := Wall, pss_per_vm := PerVm, procs_per_vm := Procs, left := Left, left_dirs := Dirs,
      failed := Failed, not_ok := NotOk} = R,
    {Worst, WorstAt} = lists:max([W || {W, _, _} <- Ticks]),
    Over5 = lists:sum([O || {_, O, _} <- Ticks]),
    NTicks = lists:sum([C || {_, _, C} <- Ticks]),
    Long = lists:append([maps:get(K, R) || K <- [long_create, long_run, long_stop]]),
    LongMax = lists:max([0 | [timeout(L) || L <- Long]]),
    io:format("~nticker (~b processes, 1 ms timers, for the whole ~.1f s): ~b ticks, ~b late by more than 5 ms, "
              "worst ~.1f ms late (at ~s)~n", [length(Tickers), Total, NTicks, Over5, Worst / 1000, clock(WorstAt)]),
    #{ticks := PeerN, over_5ms := PeerOver5, worst_us := PeerWorst, worst_at := PeerAt} = PeerTicks,
    io:format("a plain program outside the BEAM (bench/wake_ticker.rs: a session of its own at nice 0, as the "
              "BEAM; 1 ms sleeps), the same run: ~b ticks, ~b late by more than 5 ms, worst ~.1f ms late (at ~s)~n",
              [PeerN, PeerOver5, PeerWorst / 1000, clock(PeerAt)]),
    io:format("created ~b of ~b (failures ~b, not answering ~b); ~.1f host processes per VM~n",
              [Vms, N, length(Failed), length(NotOk), Procs]),
    io:format("~n"),
    figure(io_lib:format("density1000 wall time, ~b VMs to the prompt", [N]), Wall, "s", '=<', 30.0 * N / 1000),
    figure("density1000 PSS per idle VM", PerVm, "MB", '=<', 10.0),
    figure("density1000 VMs created and answering", Vms - length(NotOk), "", '>=', N),
    figure("density1000 worst scheduler delay (ticker, whole run)", Worst / 1000, "ms", '=<', 5.0),
    figure("density1000 longest long_schedule report (whole run)", LongMax, "ms", '=<', 5),
    figure("density1000 worst delay of a plain program's 1 ms sleep (peer, same run)", PeerWorst / 1000, "ms", '=<',
           5.0),
    figure("density1000 worst scheduler delay, BEAM / plain program", Worst / max(1, PeerWorst), "", '=<', 1.0),
    figure("density1000 UML processes left after the stops", length(Left), "", '=<', 0),
    figure("density1000 runtime dirs left after the stops", length(Dirs), "", '=<', 0),
    case {Failed, NotOk, Left, Dirs} of
        {[], [], [], []} -> ok;
        _ -> error(density1000_failures)
    end.

%% A process that asks for a 1 ms timeout again and again and keeps how late
%% the wake-ups come: what any ordinary process of the node waits for a
%% scheduler. {{Worst us, when (ms since the epoch)}, ticks over 5 ms late,
%% ticks}.
tick(Last, Worst, Over, Count) ->
    receive
        {stop, From} -> From ! {ticks, self(), {Worst, Over, Count}}
    after 1 ->
        Now = now_us(),
        Late = Now - Last - 1000,
        tick(Now, max(Worst, {Late, os:system_time(millisecond)}), Over + (if Late > 5000 -> 1; true -> 0 end),
             Count + 1)
    end.

%% The same outside the BEAM: bench/wake_ticker.rs, which bench/run built.
%% What it sees, every program on the host sees (see its comment).
start_peer_ticker() ->
    Path = filename:join([os:getenv("EVUM_BENCH_TMP"), "bench", "wake_ticker"]),
    open_port({spawn_executable, Path}, [{line, 256}, exit_status, use_stdio]).

stop_peer_ticker(Port) ->
    port_command(Port, "\n"),
    receive
        {Port, {data, {eol, Line}}} ->
            ["ticks", N, "late_over_5ms", Over, "worst_us", Worst, "worst_at", At] = string:lexemes(Line, " "),
            #{ticks => list_to_integer(N), over_5ms => list_to_integer(Over), worst_us => list_to_integer(Worst),
              worst_at => round(list_to_float(At) * 1000)}
    after 5000 -> error(wake_ticker_silent)
    end.

%% A time of day, to the millisecond, from ms since the epoch.
clock(Ms) ->
    calendar:system_time_to_rfc3339(Ms, [{unit, millisecond}, {offset, "Z"}]).

stop_ticker(T) ->
    T ! {stop, self()},
    receive
        {ticks, T, R} -> R
    end.

%% {Name, Have, Need, Enough} for every limit N VMs run into, printed as a
%% table. Per-VM needs are the sample's.
limits(N, #{pss_per_vm := Pss, procs_per_vm := Procs, per_vm := PerVm, max_maps := MaxMaps}) ->
    Limits = read_limits(),
    Tasks = tasks(),
    NeedTasks = Tasks + ceil(N * (Procs + max(0.0, maps:get(threads, PerVm)))),
    {ok, FileNr} = file:read_file("/proc/sys/fs/file-nr"),
    [Handles, _, FileMax] = [list_to_integer(F) || F <- string:lexemes(binary_to_list(FileNr), " \t\n")],
    {ok, Fds} = file:list_dir("/proc/self/fd"),
    MemMb = mem_available_kb() div 1024,
    NeedMb = round(N * Pss * ?PSS_MARGIN) + ?RESERVE_MB,
    Root = string:trim(os:cmd("id -u")) =:= "0",
    Rows = [
        {"free memory (MemAvailable, MB)", MemMb, NeedMb,
         io_lib:format("~b x ~.2f MB PSS x ~.2f + ~b MB", [N, Pss, ?PSS_MARGIN, ?RESERVE_MB])},
        {"BEAM open files (ulimit -n)", maps:get("Max open files", Limits),
         length(Fds) + ceil(N * maps:get(fds, PerVm)) + 100, "now + N x fds per VM + 100"},
        {"kernel.pid_max", read_int("/proc/sys/kernel/pid_max"), NeedTasks, "tasks now + N x (processes + threads) per VM"},
        {"kernel.threads-max", read_int("/proc/sys/kernel/threads-max"), NeedTasks, "the same"},
        {"user processes (ulimit -u)", case Root of true -> unlimited; false -> maps:get("Max processes", Limits) end,
         NeedTasks, "the same; root is not held to it"},
        {"vm.max_map_count (per process)", read_int("/proc/sys/vm/max_map_count"), 2 * MaxMaps,
         "2 x the most maps of one VM process"},
        {"fs.file-max", FileMax, Handles + ceil(N * maps:get(file_handles, PerVm)) + 1000,
         "file handles now + N x per VM + 1000"},
        {"BEAM processes (+P)", erlang:system_info(process_limit),
         erlang:system_info(process_count) + ceil(N * maps:get(erl_procs, PerVm)) + N + 1000,
         "now + N x (per VM + an owner) + 1000"},
        {"BEAM ports (+Q)", erlang:system_info(port_limit),
         erlang:system_info(port_count) + ceil(N * max(0.0, maps:get(erl_ports, PerVm))) + 100, "now + N x per VM + 100"}
    ],
    io:format("  ~-34s ~14s ~14s  ~s~n", ["limit", "have", "need", "from"]),
    [begin
         Ok = Have =:= unlimited orelse Have >= Need,
         io:format("  ~-34s ~14s ~14b  ~s~s~n",
                   [Name, to_text(Have), Need, How, case Ok of true -> ""; false -> "   <-- TOO LOW" end]),
         {Name, Have, Need, Ok}
     end
     || {Name, Have, Need, How} <- Rows].

to_text(unlimited) -> "unlimited";
to_text(N) -> integer_to_list(N).

%% Soft limits of this process, by name, as /proc/self/limits has them.
read_limits() ->
    {ok, B} = file:read_file("/proc/self/limits"),
    maps:from_list([
        {string:trim(Name), case Soft of "unlimited" -> unlimited; _ -> list_to_integer(Soft) end}
     || Line <- tl(string:lexemes(binary_to_list(B), "\n")),
        length(Line) > 26,
        {Name, Rest} <- [lists:split(26, Line)],
        [Soft | _] <- [string:lexemes(Rest, " ")]
    ]).

read_int(Path) ->
    {ok, B} = file:read_file(Path),
    binary_to_integer(string:trim(B)).

%% Every task (thread) of the host now: /proc/loadavg's "running/total".
tasks() ->
    {ok, B} = file:read_file("/proc/loadavg"),
    [_, _, _, RT | _] = string:lexemes(binary_to_list(B), " "),
    [_, Total] = string:split(RT, "/"),
    list_to_integer(Total).

mem_available_kb() ->
    {ok, B} = file:read_file("/proc/meminfo"),
    {match, [Kb]} = re:run(B, "^MemAvailable:\\s+(\\d+) kB", [multiline, {capture, all_but_first, list}]),
    list_to_integer(Kb).
