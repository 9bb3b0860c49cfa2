%% @doc The console benchmark: lines per second from `cat' in the guest to
%% the Erlang process that counts them, evum's owner messages against an
%% Erlang port in line mode on the same kernel's console (the original evum
%% design). See bench/README.md.
-module(evum_bench_console).

-export([run/1]).

-import(evum_bench_lib, [
    env_int/2, header/1, note_pgid/2, guest_kernel/1, fresh_identity/3, kill_bare/3, quiet/1, flush/0, now_us/0,
    median/1, rate_line/2, ratio/4, cpu_ticks/1
]).

%% Lines per second from `cat' of a 200 000-line file in the guest to the
%% Erlang process that counts them: evum's owner messages versus an Erlang
%% port in line mode on the UML console (the original evum design).
run(Tmp) ->
    Lines = env_int("EVUM_BENCH_LINES", 200000),
    Runs = env_int("EVUM_BENCH_CONSOLE_RUNS", 5),
    header(io_lib:format("console: cat of a ~b-line file in the guest, ~b runs each", [Lines, Runs])),
    {ok, _} = application:ensure_all_started(evum),
    Last = integer_to_binary(Lines),
    Seq = "seq 1 " ++ integer_to_list(Lines) ++ " > /tmp/f",
    {ok, Vm} = evm:create([{label, evum_bench_console}]),
    #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
    note_pgid(OsPid, Umid),
    %% The port peer runs the binary the guest runs.
    Kernel = guest_kernel(Vm),
    {ok, Cmdline} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/cmdline"),
    [_ | Template] = [binary_to_list(A) || A <- binary:split(Cmdline, <<0>>, [global, trim_all])],
    EvumRates =
        try
            {ok, 0, _} = evum:cmd(Vm, Seq, 300000),
            quiet(300),
            [evum_cat_run(Vm, Last, R) || R <- lists:seq(1, Runs)]
        after
            evm:stop(Vm),
            flush()
        end,
    %% The port peer: the same guest command line, except that the serial
    %% line evum uses as command channel is not connected (ssl0=null): an
    %% Erlang port has only the child's stdin and stdout.
    PortTemplate = [
        case A of
            "ssl0=" ++ _ -> "ssl0=null";
            _ -> A
        end
     || A <- Template
    ],
    {PUmid, PUmlDir, PArgs} = fresh_identity(PortTemplate, Tmp, "console"),
    Port = open_port({spawn_executable, Kernel}, [{args, PArgs}, {line, 65536}, binary, exit_status]),
    {os_pid, POsPid} = erlang:port_info(Port, os_pid),
    note_pgid(POsPid, PUmid),
    PortRates =
        try
            port_wait_line(Port, fun(L) -> binary:match(L, <<"Enter 'help'">>) =/= nomatch end, 60000),
            port_command(Port, Seq ++ "; echo SEQ-DONE\n"),
            port_wait_line(Port, fun(L) -> L =:= <<"SEQ-DONE">> end, 300000),
            [port_cat_run(Port, Last, R) || R <- lists:seq(1, Runs)]
        after
            kill_bare(Port, POsPid, PUmlDir)
        end,
    io:format("~n"),
    rate_line("evum: lines/s to the owner pid", [R || {R, _} <- EvumRates]),
    rate_line("port: lines/s via open_port {line, 65536}", [R || {R, _} <- PortRates]),
    cpu_line("evum: BEAM CPU ms per run (whole OS process)", [C || {_, C} <- EvumRates]),
    cpu_line("port: BEAM CPU ms per run (whole OS process)", [C || {_, C} <- PortRates]),
    io:format("(the guest's cat is the limit for both: see UML-NOTES, ~~240 000 lines/s)~n~n"),
    ratio("console evum/port lines/s (median)",
          median([R || {R, _} <- EvumRates]) / median([R || {R, _} <- PortRates]), '>=', 1.0),
    ok.

cpu_line(What, L) ->
    io:format("~-44s median ~b  (min ~b, max ~b, n=~b)~n",
              [What, round(median(L)), lists:min(L), lists:max(L), length(L)]).

%% User plus system CPU time of this OS process (all its threads: schedulers,
%% evum's I/O thread, the port's), in ms (10 ms resolution).
beam_cpu_ms() ->
    cpu_ticks("self") * 10.

evum_cat_run(Vm, Last, R) ->
    C0 = beam_cpu_ms(),
    T0 = now_us(),
    ok = evum:puts(Vm, "cat /tmp/f"),
    N = count_evum(Last, 0),
    T1 = now_us(),
    C1 = beam_cpu_ms(),
    Sync = <<"SYNC-", (integer_to_binary(R))/binary>>,
    ok = evum:puts(Vm, ["echo ", Sync]),
    evum_wait_line(Sync, 10000),
    quiet(100),
    Rate = N / ((T1 - T0) / 1.0e6),
    io:format("  evum run ~b: ~b lines in ~.3f s = ~b lines/s, BEAM CPU ~b ms~n",
              [R, N, (T1 - T0) / 1.0e6, round(Rate), C1 - C0]),
    {Rate, C1 - C0}.

count_evum(Last, N) ->
    receive
        Last -> N + 1;
        B when is_binary(B) -> count_evum(Last, N + 1)
    after 60000 -> error({console_timeout, N})
    end.

evum_wait_line(Line, Timeout) ->
    receive
        Line -> ok;
        B when is_binary(B) -> evum_wait_line(Line, Timeout)
    after Timeout -> error({console_timeout, Line})
    end.

port_cat_run(Port, Last, R) ->
    LastCr = <<Last/binary, "\r">>,
    C0 = beam_cpu_ms(),
    T0 = now_us(),
    port_command(Port, "cat /tmp/f\n"),
    N = count_port(Port, Last, LastCr, 0),
    T1 = now_us(),
    C1 = beam_cpu_ms(),
    Sync = <<"SYNC-", (integer_to_binary(R))/binary>>,
    port_command(Port, ["echo ", Sync, "\n"]),
    port_wait_line(Port, fun(L) -> L =:= Sync end, 10000),
    port_quiet(Port, 100),
    Rate = N / ((T1 - T0) / 1.0e6),
    io:format("  port run ~b: ~b lines in ~.3f s = ~b lines/s, BEAM CPU ~b ms~n",
              [R, N, (T1 - T0) / 1.0e6, round(Rate), C1 - C0]),
    {Rate, C1 - C0}.

count_port(Port, Last, LastCr, N) ->
    receive
        {Port, {data, {eol, L}}} when L =:= LastCr; L =:= Last -> N + 1;
        {Port, {data, {eol, _}}} -> count_port(Port, Last, LastCr, N + 1);
        {Port, {data, {noeol, _}}} -> count_port(Port, Last, LastCr, N);
        {Port, {exit_status, S}} -> error({port_exited, S})
    after 60000 -> error({port_console_timeout, N})
    end.

%% Waits for a complete console line (CR stripped) that Pred accepts.
port_wait_line(Port, Pred, Timeout) ->
    receive
        {Port, {data, {eol, L}}} ->
            case Pred(strip_cr(L)) of
                true -> ok;
                false -> port_wait_line(Port, Pred, Timeout)
            end;
        {Port, {data, {noeol, _}}} ->
            port_wait_line(Port, Pred, Timeout);
        {Port, {exit_status, S}} ->
            error({port_exited, S})
    after Timeout -> error(port_wait_timeout)
    end.

port_quiet(Port, Ms) ->
    receive
        {Port, {data, _}} -> port_quiet(Port, Ms)
    after Ms -> ok
    end.

strip_cr(L) ->
    case byte_size(L) of
        0 -> L;
        S ->
            case binary:last(L) of
                $\r -> binary:part(L, 0, S - 1);
                _ -> L
            end
    end.
