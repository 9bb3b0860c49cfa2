%% @doc evum benchmarks: boot, console throughput, density, the switch, booting
%% from a disk image and the gateway, each against a peer measured in the
%% same run. Run them with `sh bench/run' (which compiles this module into a
%% temporary directory); see bench/README.md.
%%
%% Every benchmark cleans up what it started: evum VMs are stopped with
%% evm:stop/1, bare UML peers are killed by process group and their uml_dir
%% removed. As a last resort bench/run kills every process group listed in
%% $EVUM_BENCH_TMP/pgids and every UML process whose umid this node chose.
-module(evum_bench).

-export([main/1]).

-define(KERNEL, "/usr/bin/linux").
-define(SETARCH, "/usr/bin/setarch").
-define(READY_MARKER, <<1, "EVUM READY">>).
%% The disk benchmark's image (an [image.NAME] of its configuration file).
-define(DISK_DIST, evum_bench_disk).
%% The gateway benchmark's peer: libslirp as a vde plug (libvdeplug-slirp).
-define(VDE_PLUG, "/usr/bin/vde_plug").
-define(VDE_SLIRP_PLUGIN, "/usr/lib/x86_64-linux-gnu/vdeplug/libvdeplug_slirp.so").
-define(GW_GUEST_PORT, "7777").

%%% Entry point ---------------------------------------------------------------

main([Which]) -> main(Which);
main(Which) when is_atom(Which) ->
    Tmp = tmp_base(),
    note_beam_pid(Tmp),
    warn_foreign("before"),
    Result =
        try
            run(Which, Tmp)
        catch
            Class:Reason:Stack ->
                io:format("~nFAILED ~p: ~p:~p~n~p~n", [Which, Class, Reason, Stack]),
                failed
        end,
    warn_foreign("after"),
    Code =
        case Result of
            ok -> 0;
            _ -> 1
        end,
    %% Let the output reach stdout before the node halts.
    halt(Code, [{flush, true}]).

run(boot, Tmp) -> boot(Tmp);
run(console, Tmp) -> console(Tmp);
run(density, Tmp) -> density(Tmp);
run(switch, Tmp) -> switch(Tmp);
run(disk, Tmp) -> disk(Tmp);
run(gateway, Tmp) -> gateway(Tmp);
run(Other, _) -> error({unknown_benchmark, Other}).

%%% 1. Boot -------------------------------------------------------------------

%% Readiness, the same for all three: the guest's `\x01EVUM READY' line on
%% serial line ssl0 (fds 3 and 4 of the UML process). evm:create/1 returns when
%% evum has read it; for the bare peers a shell wrapper points fds 3 and 4 at
%% the port's pipes and the time is taken when the marker shows up there.
boot(Tmp) ->
    Runs = env_int("EVUM_BENCH_BOOTS", 10),
    header(io_lib:format("boot: ~b sequential boots each, interleaved", [Runs])),
    {ok, _} = application:ensure_all_started(evum),
    %% A warm-up evum VM: loads the NIF, builds or finds the image, and gives
    %% us evum's exact command line to reuse for the bare peers.
    {Template, WarmUp} = evum_template(),
    io:format("evum's command line (from /proc/<os_pid>/cmdline of a VM it started):~n  ~s~n",
              [lists:join(" ", [?KERNEL | Template])]),
    FastArgs = Template,
    StockArgs = [A || A <- Template, not is_fast_arg(A)],
    io:format("bare-fast  = setarch x86_64 -R " ?KERNEL " <the same args, fresh umid/uml_dir/hostfs>~n"),
    io:format("bare-stock = " ?KERNEL " <the same args without initcall_blacklist= and lpj=>, ASLR on~n"),
    io:format("readiness  = the guest's \"\\x01EVUM READY\" line on ssl0 (evum's own readiness signal)~n"),
    Kinds = [evum, fast, stock],
    Boot = fun
        (evum, I) -> evum_boot(I);
        (fast, I) -> bare_boot(fast, FastArgs, Tmp, I);
        (stock, I) -> bare_boot(stock, StockArgs, Tmp, I)
    end,
    %% One unmeasured boot of each bare kind too (page cache, first exec).
    _ = Boot(fast, 0),
    _ = Boot(stock, 0),
    io:format("warm-up done (evum first boot, incl. application start: ~.3f s)~n", [WarmUp]),
    Results = rounds(Kinds, Runs, Boot),
    Evum = maps:get(evum, Results),
    Create = [C || #{create := C} <- Evum],
    CreateCmd = [C + T || #{create := C, cmd := T} <- Evum],
    Cmd = [T || #{cmd := T} <- Evum],
    Stop = [S || #{stop := S} <- Evum],
    Fast = [T || #{ready := T} <- maps:get(fast, Results)],
    Stock = [T || #{ready := T} <- maps:get(stock, Results)],
    io:format("~n"),
    stat_line("evum: evm:create/1 returns (guest READY)", Create),
    stat_line("evum: create + first evum:cmd(\"true\") ok", CreateCmd),
    stat_line("evum: the evum:cmd(\"true\") alone", Cmd),
    stat_line("evum: evm:stop/1 (until nothing left)", Stop),
    case [L || #{left := L} <- Evum, L =/= []] of
        [] -> ok;
        Lefts -> io:format("NOTE: ~b of ~b evm:stop/1 calls returned with processes of the VM still alive: ~p~n",
                           [length(Lefts), length(Evum), Lefts])
    end,
    stat_line("bare-fast: spawn to READY", Fast),
    stat_line("bare-stock: spawn to READY", Stock),
    cpu_stat_line("evum: host CPU busy during create", [C || #{cpu := C} <- Evum]),
    cpu_stat_line("bare-fast: host CPU busy until READY", [C || #{cpu := C} <- maps:get(fast, Results)]),
    cpu_stat_line("bare-stock: host CPU busy until READY", [C || #{cpu := C} <- maps:get(stock, Results)]),
    %% Rounds are interleaved, so a ratio within each round is less
    %% disturbed by slow periods of a busy host than a ratio of medians.
    Paired = fun(Peer) ->
        median([C / R || {#{create := C}, #{ready := R}} <- lists:zip(Evum, maps:get(Peer, Results))])
    end,
    io:format("evum/bare-fast within each round: median ~.3f; evum/bare-stock: median ~.3f~n",
              [Paired(fast), Paired(stock)]),
    EM = median(Create),
    io:format("~n"),
    ratio("boot evum/bare-fast (median, create returning)", EM / median(Fast), '=<', 1.05),
    ratio("boot evum/bare-stock (median, create returning)", EM / median(Stock), '=<', 0.3),
    figure("boot evum median, create returning", EM, "s", '=<', 0.35),
    figure("boot evum median, create + cmd \"true\"", median(CreateCmd), "s", '=<', 0.35),
    ok.

is_fast_arg("initcall_blacklist=" ++ _) -> true;
is_fast_arg("lpj=" ++ _) -> true;
is_fast_arg(_) -> false.

%% Boots one VM through evum and returns its command line (minus the kernel)
%% and the time the whole first create took.
evum_template() ->
    evum_template([]).

%% The same with more evm:create/1 options (a dist: the template's
%% copy-on-write disk is destroyed with it).
evum_template(Options) ->
    T0 = now_us(),
    {ok, Vm} = evm:create([{label, evum_bench_template} | Options]),
    T1 = now_us(),
    #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
    note_pgid(OsPid, Umid),
    {ok, Cmdline} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/cmdline"),
    [_Kernel | Args] = [binary_to_list(A) || A <- binary:split(Cmdline, <<0>>, [global, trim_all])],
    ok = evm:stop(Vm),
    flush(),
    proplists:is_defined(dist, Options) andalso (ok = evm:destroy(evum_bench_template)),
    {Args, (T1 - T0) / 1.0e6}.

evum_boot(I) ->
    flush(),
    Label = list_to_atom("evum_bench_boot_" ++ integer_to_list(I)),
    C0 = cpu_busy_s(),
    T0 = now_us(),
    {ok, Vm} = evm:create([{label, Label}]),
    T1 = now_us(),
    C1 = cpu_busy_s(),
    {ok, 0, <<>>} = evum:cmd(Vm, "true"),
    T2 = now_us(),
    #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
    note_pgid(OsPid, Umid),
    T3 = now_us(),
    ok = evm:stop(Vm),
    T4 = now_us(),
    %% evm:stop/1 promises nothing of the VM is left when it returns.
    LeftAtReturn = live_members([OsPid]),
    [] = wait_gone([OsPid], 5000),
    flush(),
    #{create => (T1 - T0) / 1.0e6, cmd => (T2 - T1) / 1.0e6, stop => (T4 - T3) / 1.0e6, cpu => C1 - C0,
      left => LeftAtReturn}.

%% A bare UML peer: the given args with a fresh umid, uml_dir and hostfs, fds
%% 3 and 4 (ssl0) on the port's stdin and stdout, stderr with the console.
bare_boot(Kind, Template, Tmp, I) ->
    bare_boot(Kind, Template, Tmp, I, #{}).

%% Opts: `cow_over => Base': the ubd0 argument becomes a fresh copy-on-write
%% disk over Base in the peer's uml_dir (removed with it); `prompt => true':
%% the clock also runs until the console's shell prompt (see wait_usable/4).
%% Every kind but `stock' runs with address randomization off, as evum's VMs.
bare_boot(Kind, Template, Tmp, I, Opts) ->
    {Umid, UmlDir, Args0} = fresh_identity(Template, Tmp, io_lib:format("~s~b", [Kind, I])),
    Cow = filename:join(UmlDir, "disk.cow"),
    Args =
        case Opts of
            #{cow_over := Base} -> [fresh_cow(A, Cow, Base) || A <- Args0];
            _ -> Args0
        end,
    Argv =
        case Kind of
            stock -> [?KERNEL | Args];
            _ -> [?SETARCH, "x86_64", "-R", ?KERNEL | Args]
        end,
    C0 = cpu_busy_s(),
    T0 = now_us(),
    Port = open_port(
        {spawn_executable, "/bin/sh"},
        [{args, ["-c", "exec \"$@\" 3<&0 4>&1 2>&1", "sh" | Argv]}, binary, stream, exit_status]
    ),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    note_pgid(OsPid, Umid),
    try
        Times = wait_usable(Port, maps:get(prompt, Opts, false), T0, 60000),
        Times#{cpu => cpu_busy_s() - C0, cow => filelib:is_regular(Cow)}
    after
        kill_bare(Port, OsPid, UmlDir)
    end.

fresh_cow("ubd0=" ++ _, Cow, Base) -> "ubd0=" ++ Cow ++ "," ++ Base;
fresh_cow(Arg, _, _) -> Arg.

%% Reads a bare UML's output (console and ssl0 on one stream) until the
%% guest's READY marker and, if Prompt, the console's shell prompt have
%% arrived: seconds from T0 to each, as `#{ready := S, prompt => S}'. The
%% prompt is what evum delivers as a console message ending in "# ": the
%% text after the stream's last newline (the marker line and escape
%% sequences taken out), when a read ends with it.
wait_usable(Port, Prompt, T0, Timeout) ->
    wait_usable(Port, Prompt, T0, erlang:monotonic_time(millisecond) + Timeout, <<>>, #{}).

wait_usable(_Port, false, _T0, _Deadline, _Line, #{ready := _} = Seen) ->
    Seen;
wait_usable(_Port, true, _T0, _Deadline, _Line, #{ready := _, prompt := _} = Seen) ->
    Seen;
wait_usable(Port, Prompt, T0, Deadline, Line, Seen) ->
    receive
        {Port, {data, Data}} ->
            At = (now_us() - T0) / 1.0e6,
            New = <<Line/binary, Data/binary>>,
            %% Values already in Seen win: each is the first time it was seen.
            Seen1 =
                case binary:match(New, ?READY_MARKER) of
                    nomatch -> Seen;
                    _ -> maps:merge(#{ready => At}, Seen)
                end,
            Console = binary:replace(New, <<?READY_MARKER/binary, "\n">>, <<>>, [global]),
            Last = lists:last(binary:split(Console, <<"\n">>, [global])),
            %% As evum's console does: escape sequences out (busybox asks
            %% for the cursor position, ESC [6n, after its prompt).
            Text = re:replace(Last, "\e\\[[0-9;?]*[@-~]", "", [global, {return, binary}]),
            Seen2 =
                case Prompt andalso binary:longest_common_suffix([Text, <<"# ">>]) =:= 2 of
                    true -> maps:merge(#{prompt => At}, Seen1);
                    false -> Seen1
                end,
            %% A line that long is no prompt; its end may still hold a marker.
            Keep = min(byte_size(Last), 256),
            wait_usable(Port, Prompt, T0, Deadline, binary:part(Last, byte_size(Last), -Keep), Seen2);
        {Port, {exit_status, Status}} ->
            error({bare_uml_exited, Status})
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
        error({bare_uml_timeout, Prompt, Seen})
    end.

%%% 2. Console ----------------------------------------------------------------

%% Lines per second from `cat' of a 200 000-line file in the guest to the
%% Erlang process that counts them: evum's owner messages versus an Erlang
%% port in line mode on the UML console (the original evum design).
console(Tmp) ->
    Lines = env_int("EVUM_BENCH_LINES", 200000),
    Runs = env_int("EVUM_BENCH_CONSOLE_RUNS", 5),
    header(io_lib:format("console: cat of a ~b-line file in the guest, ~b runs each", [Lines, Runs])),
    {ok, _} = application:ensure_all_started(evum),
    Last = integer_to_binary(Lines),
    Seq = "seq 1 " ++ integer_to_list(Lines) ++ " > /tmp/f",
    {ok, Vm} = evm:create([{label, evum_bench_console}]),
    #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
    note_pgid(OsPid, Umid),
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
    Port = open_port({spawn_executable, ?KERNEL}, [{args, PArgs}, {line, 65536}, binary, exit_status]),
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

cpu_stat_line(What, L) ->
    io:format("~-44s median ~.2f CPU-s  (min ~.2f, max ~.2f, n=~b)~n",
              [What, median(L), lists:min(L), lists:max(L), length(L)]).

cpu_line(What, L) ->
    io:format("~-44s median ~b  (min ~b, max ~b, n=~b)~n",
              [What, round(median(L)), lists:min(L), lists:max(L), length(L)]).

%% User plus system CPU time of this OS process (all its threads: schedulers,
%% evum's I/O thread, the port's), in ms (10 ms resolution).
beam_cpu_ms() ->
    {ok, B} = file:read_file("/proc/self/stat"),
    {Pos, _} = lists:last(binary:matches(B, <<")">>)),
    Fields = binary:split(binary:part(B, Pos + 2, byte_size(B) - Pos - 2), <<" ">>, [global]),
    %% Fields 14 and 15 of stat (utime, stime) are 12th and 13th after the name.
    Ticks = binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields)),
    Ticks * 10.

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

%%% 3. Density ----------------------------------------------------------------

density(_Tmp) ->
    N = env_int("EVUM_BENCH_VMS", 100),
    Idle = env_int("EVUM_BENCH_IDLE_MS", 3000),
    Cores = erlang:system_info(logical_processors_available),
    header(io_lib:format("density: ~b VMs created concurrently through evm:create/1 on ~p cores", [N, Cores])),
    {ok, _} = application:ensure_all_started(evum),
    %% Warm up (NIF loaded, image cached) so the measurement is of boots only.
    {_, _} = evum_template(),
    Parent = self(),
    Col = monitor_start(),
    Forks0 = host_forks(),
    Cpu0 = cpu_busy_s(),
    T0 = now_us(),
    Owners = [spawn(fun() -> owner(Parent, I) end) || I <- lists:seq(1, N)],
    try
        Created = [
            receive
                {created, O, Res} -> {O, Res}
            after 600000 -> error({density_timeout, O})
            end
         || O <- Owners
        ],
        T1 = now_us(),
        Cpu1 = cpu_busy_s(),
        Forks1 = host_forks(),
        Long = monitor_stop(Col),
        Failed = [{O, E} || {O, {error, E}} <- Created],
        Vms = [{O, Vm, OsPid, Umid, Dt} || {O, {ok, Vm, OsPid, Umid, Dt}} <- Created],
        OsPids = [P || {_, _, P, _, _} <- Vms],
        Wall = (T1 - T0) / 1.0e6,
        Each = [Dt || {_, _, _, _, Dt} <- Vms],
        io:format("created ~b of ~b in ~.2f s (each create: median ~.2f s, max ~.2f s); failures: ~p~n",
                  [length(Vms), N, Wall, median0(Each), max0(Each), Failed]),
        io:format("host CPU busy during the creates: ~.1f s of ~.1f s available (~.2f CPU-s per VM); "
                  "host processes created: ~b (~b per VM)~n",
                  [Cpu1 - Cpu0, Wall * Cores, (Cpu1 - Cpu0) / max(1, N), Forks1 - Forks0,
                   (Forks1 - Forks0) div max(1, N)]),
        %% Every guest answers a command (its shell and command loop are up).
        T2 = now_us(),
        Answers = pmap(fun({_, Vm, _, _, _}) -> evum:cmd(Vm, "true", 120000) end, Vms),
        T3 = now_us(),
        NotOk = [A || A <- Answers, A =/= {ok, 0, <<>>}],
        io:format("all ~b answered evum:cmd(\"true\") in ~.2f s (failures: ~p)~n",
                  [length(Vms), (T3 - T2) / 1.0e6, NotOk]),
        IdleCpu0 = cpu_busy_s(),
        timer:sleep(Idle),
        IdleCpu = (cpu_busy_s() - IdleCpu0) / (Idle / 1000),
        io:format("whole host CPU busy (other users too) while the ~b VMs idle: ~.2f of ~b cores (~.1f ms per VM per s)~n",
                  [length(Vms), IdleCpu, Cores, 1000 * IdleCpu / max(1, length(Vms))]),
        {PssKb, Procs, Spaces} = pss(OsPids),
        PerVm = PssKb / 1024 / max(1, length(Vms)),
        io:format("after ~b ms idle: ~b host processes (~.1f per VM) in ~b address spaces, total PSS ~.1f MB~n",
                  [Idle, Procs, Procs / max(1, length(Vms)), Spaces, PssKb / 1024]),
        %% Stop all of them at once; check nothing is left.
        Col2 = monitor_start(),
        T4 = now_us(),
        [O ! stop || {O, _, _, _, _} <- Vms],
        Stopped = [
            receive
                {stopped, O, R} -> R
            after 120000 -> {error, {stop_timeout, O}}
            end
         || {O, _, _, _, _} <- Vms
        ],
        T5 = now_us(),
        LeftAtReturn = live_members(OsPids),
        LongStop = monitor_stop(Col2),
        Left = wait_gone(OsPids, 10000),
        LeftDirs = [U || {_, _, _, U, _} <- Vms, filelib:is_dir(filename:join(evum_base(), U))],
        io:format("stopped ~b in ~.2f s; stop results not ok: ~p; processes alive when the last evm:stop/1 "
                  "returned: ~b; left after waiting up to 10 s (not zombies): ~p; runtime dirs left: ~p~n",
                  [length(Vms), (T5 - T4) / 1.0e6, [S || S <- Stopped, S =/= ok], length(LeftAtReturn), Left,
                   LeftDirs]),
        io:format("~n"),
        long_report("during the concurrent creates", Long),
        long_report("during the concurrent stops", LongStop),
        io:format("~n"),
        VPCS = length(Vms) / Wall / Cores,
        figure(io_lib:format("density wall time, ~b VMs to READY", [N]), Wall, "s", '=<', 20.0 * N / 100),
        figure("density PSS per idle VM", PerVm, "MB", '=<', 20.0),
        figure("long_schedule reports >= 1 ms during creates", length(Long), "", '=<', 0),
        figure("long_schedule reports >= 5 ms during creates", length([L || L <- Long, timeout(L) >= 5]), "",
               '=<', 0),
        io:format("density: ~.2f VMs/core/s (~b VMs / ~.2f s / ~b cores)~n", [VPCS, length(Vms), Wall, Cores]),
        ratio("density evum/Firecracker VMs per core per second (5)", VPCS / 5, '>=', 1.0),
        case {Failed, NotOk, Left, LeftDirs} of
            {[], [], [], []} -> ok;
            _ -> error(density_failures)
        end
    after
        [exit(O, kill) || O <- Owners],
        erlang:system_monitor(undefined)
    end.

owner(Parent, I) ->
    Label = list_to_atom("evum_bench_density_" ++ integer_to_list(I)),
    T0 = now_us(),
    %% EVUM_BENCH_KERNEL: another UML binary or wrapper (evm:create's kernel option).
    Kernel =
        case os:getenv("EVUM_BENCH_KERNEL") of
            K when is_list(K), K =/= "" -> [{kernel, K}];
            _ -> []
        end,
    case evm:create([{label, Label}, {timeout, 300000} | Kernel]) of
        {ok, Vm} ->
            T1 = now_us(),
            #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
            note_pgid(OsPid, Umid),
            Parent ! {created, self(), {ok, Vm, OsPid, Umid, (T1 - T0) / 1.0e6}},
            owner_loop(Parent, Vm);
        Error ->
            Parent ! {created, self(), Error}
    end.

owner_loop(Parent, Vm) ->
    receive
        stop ->
            R = evm:stop(Vm),
            Parent ! {stopped, self(), R};
        _Console ->
            owner_loop(Parent, Vm)
    end.

pmap(F, List) ->
    Self = self(),
    Refs = [
        begin
            Ref = make_ref(),
            spawn_link(fun() -> Self ! {Ref, F(X)} end),
            Ref
        end
     || X <- List
    ],
    [
        receive
            {Ref, R} -> R
        end
     || Ref <- Refs
    ].

%% Sum of Pss over every process in the VMs' process groups. UML's two I/O
%% helper processes share the main process's address space (CLONE_VM), and
%% smaps_rollup reports the whole address space for each of them: count
%% every address space once (kcmp(KCMP_VM) tells which processes share one).
pss(OsPids) ->
    Members = [{P, G} || {P, G, State} <- members(OsPids), State =/= "Z"],
    Groups = maps:groups_from_list(fun({_, G}) -> G end, fun({P, _}) -> P end, Members),
    Reps = lists:append([one_per_mm(Pids) || Pids <- maps:values(Groups)]),
    Kb = lists:sum([pss_of(P) || P <- Reps]),
    {Kb, length(Members), length(Reps)}.

%% The processes of one VM, one per address space.
one_per_mm(Pids) ->
    Script = filename:join(tmp_base(), "one-per-mm.pl"),
    ok = file:write_file(
        Script,
        "my @reps;\n"
        "PID: for my $p (@ARGV) {\n"
        "    for my $r (@reps) { next PID if syscall(312, $p + 0, $r + 0, 1, 0, 0) == 0 }  # kcmp(KCMP_VM); numbers, not strings\n"
        "    push @reps, $p;\n"
        "}\n"
        "print \"@reps\\n\";\n"
    ),
    Out = os:cmd(lists:flatten(["perl ", Script | [[" ", integer_to_list(P)] || P <- lists:sort(Pids)]])),
    case string:to_integer(Out) of
        {error, _} -> error({kcmp_failed, Out});
        _ -> [list_to_integer(T) || T <- string:lexemes(Out, " \n")]
    end.

pss_of(Pid) ->
    case file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/smaps_rollup") of
        {ok, B} ->
            case re:run(B, "^Pss:\\s+(\\d+) kB", [multiline, {capture, all_but_first, list}]) of
                {match, [Kb]} -> list_to_integer(Kb);
                nomatch -> 0
            end;
        _ ->
            0
    end.

%% system_monitor long_schedule, 1 ms threshold, counted by a collector.
monitor_start() ->
    Col = spawn(fun() -> collect([]) end),
    erlang:system_monitor(Col, [{long_schedule, 1}]),
    Col.

monitor_stop(Col) ->
    erlang:system_monitor(undefined),
    timer:sleep(100),
    Col ! {get, self()},
    receive
        {Col, L} -> L
    end.

collect(Acc) ->
    receive
        {monitor, Who, long_schedule, Info} -> collect([{Who, Info} | Acc]);
        {get, From} -> From ! {self(), lists:reverse(Acc)}
    end.

timeout({_, Info}) -> proplists:get_value(timeout, Info, 0).

long_report(What, Long) ->
    Ge5 = [L || L <- Long, timeout(L) >= 5],
    io:format("long_schedule ~s: ~b >= 1 ms, ~b >= 5 ms, max ~p ms~n",
              [What, length(Long), length(Ge5), lists:max([0 | [timeout(L) || L <- Long]])]),
    Where = lists:foldl(
        fun({Who, Info}, Acc) ->
            K = {kind(Who), proplists:get_value(in, Info), proplists:get_value(out, Info)},
            maps:update_with(K, fun(C) -> C + 1 end, 1, Acc)
        end,
        #{},
        Long
    ),
    Top = lists:sublist(lists:reverse(lists:keysort(2, maps:to_list(Where))), 5),
    [io:format("    ~bx ~p in ~p out ~p~n", [C, Kind, In, Out]) || {{Kind, In, Out}, C} <- Top],
    ok.

kind(P) when is_port(P) -> port;
kind(P) when is_pid(P) ->
    case erlang:process_info(P, registered_name) of
        {registered_name, Name} -> Name;
        _ -> pid
    end.

%%% 4. Switch -----------------------------------------------------------------

%% evum's Ethernet switch against Debian's uml_switch and vde_switch, all
%% driven by one load generator (bench/switch_load.rs, compiled by bench/run)
%% that speaks UML's daemon transport; then the bess transport and an
%% attached Erlang process (no peer: against evum's own daemon figure); then
%% two real guests pinging and streaming TCP over evum's switch and over
%% uml_switch. Every switch is isolated: no uplink, guest addresses in
%% 10.0.0.0/24 only.
switch(Tmp) ->
    Secs = env_int("EVUM_BENCH_SWITCH_MS", 2000) / 1000,
    %% Seven: uml_switch's 64-byte rate swings by 2x from one 2-second run to
    %% the next on a 2-core machine (55 000-131 000 frames/s in one ten-round
    %% series), and a median of three follows that swing.
    Rounds = env_int("EVUM_BENCH_SWITCH_ROUNDS", 7),
    Load = filename:join([Tmp, "bench", "switch_load"]),
    filelib:is_regular(Load) orelse error({no_load_generator, Load}),
    header(io_lib:format("switch: daemon-transport forwarding, ~b rounds of ~.1f s per switch and frame size; "
                         "bess; attached Erlang process; guest ping and TCP", [Rounds, Secs])),
    Qlen = string:trim(os:cmd("cat /proc/sys/net/unix/max_dgram_qlen")),
    case netns() of
        "" ->
            io:format("host net.unix.max_dgram_qlen = ~s (left as it is: it limits every switch alike)~n", [Qlen]);
        _ ->
            io:format("private network namespace (bench/run: unshare --net), its net.unix.max_dgram_qlen = ~s "
                      "(the host's is untouched); every switch, client and guest of this run is in it~n", [Qlen])
    end,
    {ok, _} = application:ensure_all_started(evum),
    {ok, S} = evum_switch:start([{name, evum_bench_switch}]),
    try
        switch_bench(S, Load, Secs, Rounds, Tmp)
    after
        catch evum_switch:stop(S)
    end.

%% Set by bench/run when this node runs in a private network namespace with
%% its own net.unix.max_dgram_qlen: the figures' names say so.
netns() ->
    case os:getenv("EVUM_BENCH_NETNS") of
        false -> "";
        Q -> Q
    end.

%% What the figures' names get in such a namespace.
netns_tag() ->
    case netns() of
        "" -> "";
        Q -> " [netns qlen " ++ Q ++ "]"
    end.

switch_bench(S, Load, Secs, Rounds, Tmp) ->
    Sizes = [64, 1514],
    Tag = netns_tag(),
    Figure = fun(What, V, Unit, Op, Target) -> figure(What ++ Tag, V, Unit, Op, Target) end,
    Ratio = fun(What, R, Op, Target) -> ratio(What ++ Tag, R, Op, Target) end,
    Ctl = binary_to_list(evum_switch:control_socket(S)),
    Bess = binary_to_list(evum_switch:bess_socket(S)),
    io:format("evum: evum_switch:start/1 in this node, control socket ~s~n", [Ctl]),
    io:format("~n-- 1. daemon transport, client A -> switch -> client B (same load generator for all) --~n"),
    Daemon = with_peer_switch(uml_switch, Tmp, "uml-1", fun(Uml) ->
        with_peer_switch(vde_switch, Tmp, "vde-1", fun(Vde) ->
            Kinds = [{evum, Ctl}, {uml_switch, peer_ctl(Uml)}, {vde_switch, peer_ctl(Vde)}],
            lists:foldl(
                fun(I, Acc) ->
                    lists:foldl(
                        fun({Kind, Path}, Acc1) ->
                            lists:foldl(
                                fun(Size, Acc2) ->
                                    R = load(Load, ["daemon", Path, Size, Secs]),
                                    print_load(Kind, I, R),
                                    maps:update_with({Kind, Size}, fun(L) -> [R | L] end, [R], Acc2)
                                end,
                                Acc1,
                                Sizes
                            )
                        end,
                        Acc,
                        rotate(Kinds, (I - 1) rem length(Kinds))
                    )
                end,
                #{},
                lists:seq(1, Rounds)
            )
        end)
    end),
    io:format("~n-- 2. bess transport (SOCK_SEQPACKET) on evum's switch, A -> B --~n"),
    BessR = lists:foldl(
        fun(I, Acc) ->
            lists:foldl(
                fun(Size, Acc1) ->
                    R = load(Load, ["bess", Bess, Size, Secs]),
                    print_load(bess, I, R),
                    maps:update_with(Size, fun(L) -> [R | L] end, [R], Acc1)
                end,
                Acc,
                Sizes
            )
        end,
        #{},
        lists:seq(1, Rounds)
    ),
    io:format("~n-- 3. two guests: ping and TCP over evum's switch and over uml_switch --~n"),
    Guests = guests(S, Tmp),
    io:format("~n-- 4. 64-byte frames from a daemon client to an attached Erlang process --~n"),
    Attached = [attached_run(S, Ctl, Load, Secs, I) || I <- lists:seq(1, Rounds)],
    %% The figures.
    Med = fun(Key, L) -> median([maps:get(Key, R) || R <- L]) end,
    Fps = fun(Kind, Size) -> Med(fps, maps:get({Kind, Size}, Daemon)) end,
    io:format("~nmedians over ~b rounds (frames forwarded = received by B, per second):~n", [Rounds]),
    [
        io:format("  ~-10s ~4b-byte: ~8b frames/s  ~7.1f Mbit/s  offered ~8b frames/s  dropped ~4.1f%~n",
                  [Kind, Size, round(Fps(Kind, Size)), Med(mbps, maps:get({Kind, Size}, Daemon)),
                   round(Med(offered_fps, maps:get({Kind, Size}, Daemon))),
                   100 * Med(drop_share, maps:get({Kind, Size}, Daemon))])
     || Kind <- [evum, uml_switch, vde_switch], Size <- Sizes
    ],
    [
        io:format("  ~-10s ~4b-byte: ~8b frames/s  ~7.1f Mbit/s  offered ~8b frames/s  dropped ~4.1f%~n",
                  [bess, Size, round(Med(fps, maps:get(Size, BessR))), Med(mbps, maps:get(Size, BessR)),
                   round(Med(offered_fps, maps:get(Size, BessR))), 100 * Med(drop_share, maps:get(Size, BessR))])
     || Size <- Sizes
    ],
    B64 = Med(fps, maps:get(64, BessR)),
    B1514 = Med(fps, maps:get(1514, BessR)),
    io:format("  bess/daemon on evum's switch: 64-byte ~.2f, 1514-byte ~.2f~n",
              [B64 / Fps(evum, 64), B1514 / Fps(evum, 1514)]),
    AttFps = median([F || #{fps := F} <- Attached]),
    io:format("  ~-10s   64-byte: ~8b frames/s delivered as {evum_frame, ...} messages (offered ~b frames/s)~n",
              [attached, round(AttFps), round(median([O || #{offered_fps := O} <- Attached]))]),
    #{rtt := {{ERtt, ERttMed}, {URtt, URttMed}}, tcp := {ETcp, UTcp}, pings := NPings,
      bess_rtt := {BRtt, BRttMed}, bess_tcp := BTcp, bess_unpinned_tcp := FTcp, bess_placed_tcp := PTcp} = Guests,
    io:format("  guests: ping RTT (mean of ~b busybox averages) evum ~.3f ms, uml_switch ~.3f ms; "
              "median of ~b replies evum ~.3f ms, uml_switch ~.3f ms; TCP evum ~.1f Mbit/s, uml_switch ~.1f Mbit/s~n"
              "  guests over evum's bess transport, pinned with {cpu, auto}: ping avg ~.3f ms, median ~.3f ms; "
              "TCP ~.1f Mbit/s (~.1f Mbit/s unpinned; ~.1f Mbit/s with the switch's thread on the receiver's CPU)~n",
              [NPings, ERtt, URtt, NPings * 25, ERttMed, URttMed, ETcp, UTcp, BRtt, BRttMed, BTcp, FTcp, PTcp]),
    io:format("~n"),
    E64 = Fps(evum, 64),
    E1514 = Fps(evum, 1514),
    Figure("switch daemon 64-byte evum frames forwarded/s (2x uml_switch's)", round(E64), "", '>=',
           round(2 * Fps(uml_switch, 64))),
    Figure("switch daemon 1514-byte evum Mbit/s forwarded (uml_switch's)",
           Med(mbps, maps:get({evum, 1514}, Daemon)), "Mbit/s", '>=',
           round(Med(mbps, maps:get({uml_switch, 1514}, Daemon)))),
    Ratio("switch daemon 64-byte frames/s evum/uml_switch", E64 / Fps(uml_switch, 64), '>=', 2.0),
    Ratio("switch daemon 1514-byte frames/s evum/uml_switch", E1514 / Fps(uml_switch, 1514), '>=', 1.0),
    Ratio("switch daemon 64-byte frames/s evum/vde_switch", E64 / Fps(vde_switch, 64), '>=', 1.0),
    Ratio("switch daemon 1514-byte frames/s evum/vde_switch", E1514 / Fps(vde_switch, 1514), '>=', 1.0),
    %% Between two bess endpoints the issue's targets are the daemon
    %% transport's: uml_switch has no bess, so its daemon figures are the peer.
    Figure("switch bess 64-byte frames forwarded/s (2x uml_switch's daemon figure)", round(B64), "", '>=',
           round(2 * Fps(uml_switch, 64))),
    Ratio("switch bess 64-byte frames/s evum bess/uml_switch daemon", B64 / Fps(uml_switch, 64), '>=', 2.0),
    Ratio("switch bess 1514-byte frames/s evum bess/uml_switch daemon", B1514 / Fps(uml_switch, 1514), '>=', 1.0),
    Figure("switch attached-process 64-byte frames/s (half evum daemon's)", round(AttFps), "", '>=', round(E64 / 2)),
    Ratio("switch 64-byte frames/s attached Erlang process/evum daemon", AttFps / E64, '>=', 0.5),
    %% Each run's median reply, and busybox's average (which one slow
    %% reply in 25 moves): both judged alike, with the A/A pair beside them.
    [begin
         #{Key := {Es, Us, As}} = Guests,
         {AaRatio, AaP, _} = ab_compare(As, Us),
         io:format("  guests: ping ~s, A/A: the same comparison between the two uml_switches: ratio ~.3f, "
                   "p = ~.3f (what two identical switches differ by in this run)~n", [Stat, AaRatio, AaP]),
         no_regression("switch guest ping RTT evum/uml_switch" ++ Tag, Stat, Es, Us)
     end
     || {Key, Stat} <- [{run_medians, "run medians"}, {run_averages, "busybox averages"}]],
    Figure("switch guest TCP over evum", ETcp, "Mbit/s", '>=', round(UTcp)),
    Ratio("switch guest TCP Mbit/s evum/uml_switch", ETcp / UTcp, '>=', 1.0),
    %% 878 Mbit/s: guest TCP over uml_switch at qlen 1000 (UML-NOTES); the
    %% bess transport is under no datagram queue limit.
    Figure("switch guest TCP over evum bess, guests and switch thread pinned", PTcp, "Mbit/s", '>=', 878),
    Ratio("switch guest TCP over evum bess guests pinned/unpinned", BTcp / FTcp, '>=', 1.0),
    Ratio("switch guest TCP over evum bess switch thread on the receiver's CPU/left to the host",
          PTcp / BTcp, '>=', 1.0),
    ok.

%% The ping target, "no worse than uml_switch", judged as Firecracker's A/B
%% tests judge a change (tools/ab_test.py): a regression is a difference
%% that is both significant, p < 0.01, and larger than a set share of the
%% peer's mean: 5% here (Firecracker's default is 20%). Xs and Us hold a
%% figure per run (its median reply, or busybox's average), the Nth of
%% each measured in the same round. One run's median
%% moves by up to a tenth from one run to the next over either switch, and
%% the mean of 16 by a few percent: a plain "ratio =< 1" would be a coin
%% toss between two equal switches (see the A/A line the run prints).
no_regression(What, Stat, Xs, Us) ->
    {R, P, Regressed} = ab_compare(Xs, Us),
    Verdict =
        if
            %% Then no outcome reaches p < 0.01: a PASS would mean nothing.
            length(Xs) < 7 -> "UNDECIDED (fewer than 7 rounds)";
            Regressed -> "MISS";
            true -> "PASS"
        end,
    io:format("RATIO ~s (mean of ~b ~s) = ~.3f (target: no regression, i.e. not both p < 0.01 and "
              "above 1.05; p = ~.3f) ~s~n", [What, length(Xs), Stat, R, P, Verdict]).

%% Ratio of the means of Xs and Us, the one-sided p of Xs being the
%% larger, and whether that makes a regression (no_regression/4).
ab_compare(Xs, Us) ->
    Ratio = mean(Xs) / mean(Us),
    P = sign_flip_p([X - U || {X, U} <- lists:zip(Xs, Us)]),
    {Ratio, P, P < 0.01 andalso Ratio > 1.05}.

%% A paired permutation test: under "no difference" each pair's difference
%% is as likely negative as positive, so the p-value is the share of sign
%% assignments whose sum is at least the one measured. Every assignment up
%% to 16 pairs, a fixed-seed sample of 65 536 beyond.
sign_flip_p(Ds) ->
    Measured = lists:sum(Ds) - 1.0e-12,
    Abs = [abs(D) || D <- Ds],
    N = length(Abs),
    Signed = fun(Bits) -> lists:sum([case (Bits bsr I) band 1 of 1 -> -A; 0 -> A end
                                     || {I, A} <- lists:zip(lists:seq(0, N - 1), Abs)])
             end,
    AtLeast = fun(Masks) -> length([M || M <- Masks, Signed(M) >= Measured]) end,
    case N =< 16 of
        true ->
            AtLeast(lists:seq(0, (1 bsl N) - 1)) / (1 bsl N);
        false ->
            {Masks, _} = lists:mapfoldl(fun(_, Seed) -> rand:uniform_s(1 bsl N, Seed) end,
                                        rand:seed_s(exsss, {16, 65, 536}), lists:seq(1, 65536)),
            (AtLeast([M - 1 || M <- Masks]) + 1) / (65536 + 1)
    end.

%% Runs the load generator and returns its RESULT line as a map of numbers.
load(Load, Args) ->
    Argv = [if is_integer(A) -> integer_to_list(A); is_float(A) -> float_to_list(A, [{decimals, 3}]); true -> A end
            || A <- Args],
    Port = open_port({spawn_executable, Load}, [{args, Argv}, {line, 4096}, binary, exit_status, stderr_to_stdout]),
    Lines = collect_lines(Port, [], 60000),
    case [L || <<"RESULT ", L/binary>> <- Lines] of
        [Result] ->
            M = maps:from_list([
                begin
                    [K, V] = binary:split(KV, <<"=">>),
                    {binary_to_atom(K), num(V)}
                end
             || KV <- binary:split(Result, <<" ">>, [global, trim_all])
            ]),
            Sent = maps:get(sent, M),
            M#{drop_share => case Sent of 0 -> 0.0; _ -> maps:get(drops, M, 0) / Sent end};
        [] ->
            error({load_generator_failed, Args, Lines})
    end.

collect_lines(Port, Acc, Timeout) ->
    receive
        {Port, {data, {eol, L}}} -> collect_lines(Port, [L | Acc], Timeout);
        {Port, {data, {noeol, L}}} -> collect_lines(Port, [L | Acc], Timeout);
        {Port, {exit_status, 0}} -> lists:reverse(Acc);
        {Port, {exit_status, S}} -> error({load_generator_exit, S, lists:reverse(Acc)})
    after Timeout ->
        catch port_close(Port),
        error({load_generator_timeout, lists:reverse(Acc)})
    end.

num(B) ->
    try binary_to_integer(B)
    catch error:badarg -> binary_to_float(B)
    end.

print_load(Kind, I, #{size := Size, fps := Fps, mbps := Mbps, offered_fps := Off, drops := Drops, sent := Sent} = R) ->
    io:format("  round ~b ~-10s ~4b-byte: ~8b frames/s forwarded (~7.1f Mbit/s), offered ~8b/s, "
              "~b of ~b dropped (~.1f%)~s~n",
              [I, Kind, Size, Fps, Mbps, Off, Drops, Sent, 100 * maps:get(drop_share, R),
               case maps:get(wrong, R, 0) of 0 -> ""; W -> io_lib:format(", ~b unexpected frames", [W]) end]).

%% An Erlang process attached to the switch with its own MAC counts the
%% {evum_frame, ...} messages that a daemon client's 64-byte frames to that
%% MAC become. Rate = messages handled / time from the first one until all
%% sent ones have been handled (the process's mailbox may lag behind).
attached_run(S, Ctl, Load, Secs, I) ->
    Mac = <<2, 16#be, 0, 0, 0, 16#e0>>,
    Self = self(),
    Counter = spawn_link(fun() ->
        {ok, Port} = evum_switch:attach(S, [{mac, Mac}]),
        Self ! {attached, self(), Port},
        count_frames(0, undefined)
    end),
    receive {attached, Counter, _} -> ok end,
    MacHex = lists:flatten([io_lib:format("~2.16.0b", [B]) || <<B>> <= Mac]),
    Sampler = spawn_link(fun() -> sample_queue(Counter, 0) end),
    R = load(Load, ["inject", Ctl, MacHex, 64, Secs]),
    Counter ! {get, self()},
    {N, First, Done} = receive {count, Counter, C, F, D} -> {C, F, D} after 60000 -> error(attached_count_timeout) end,
    Sampler ! {get, self()},
    MaxQ = receive {max_queue, Q} -> Q after 5000 -> unknown end,
    unlink(Counter),
    exit(Counter, kill),
    Secs1 = case First of undefined -> 1.0; _ -> max(1.0e-6, (Done - First) / 1.0e6) end,
    Fps = N / Secs1,
    #{sent := Sent, offered_fps := Off} = R,
    io:format("  round ~b attached     64-byte: ~8b frames/s handled by the process, offered ~8b/s, "
              "~b of ~b sent arrived (~.1f%), longest mailbox ~p~n",
              [I, round(Fps), Off, N, Sent, 100 * N / max(1, Sent), MaxQ]),
    #{fps => Fps, offered_fps => Off, sent => Sent, received => N}.

count_frames(N, First) ->
    receive
        {evum_frame, _, _, _} when First =:= undefined -> count_frames(N + 1, now_us());
        {evum_frame, _, _, _} -> count_frames(N + 1, First);
        {get, From} -> From ! {count, self(), N, First, now_us()}
    end.

sample_queue(Pid, Max) ->
    receive
        {get, From} -> From ! {max_queue, Max}
    after 50 ->
        case erlang:process_info(Pid, message_queue_len) of
            {message_queue_len, Q} -> sample_queue(Pid, max(Q, Max));
            undefined -> sample_queue(Pid, Max)
        end
    end.

%% A peer switch (uml_switch or vde_switch), started with start_peer/4.
start_peer_switch(Kind, Tmp, Tag) ->
    Dir = filename:join(Tmp, "sw-" ++ Tag),
    Ctl = filename:join(Dir, "ctl"),
    Cmd =
        case Kind of
            %% uml_switch prints a line per dropped frame: thrown away.
            uml_switch -> "mkdir -p \"$1\" && exec /usr/bin/uml_switch -unix \"$1/ctl\" 2>/dev/null";
            %% vde_switch makes the directory itself (ctl is in it).
            vde_switch -> "exec /usr/bin/vde_switch -s \"$1\" 2>/dev/null"
        end,
    P = (start_peer(Kind, Cmd, [Dir], Dir))#{ctl => Ctl},
    wait_socket(P, 5000),
    io:format("~s: pid ~b, control socket ~s~n", [Kind, maps:get(pgid, P), Ctl]),
    P.

%% A peer process (`sh -c Cmd sh Args...') in its own process group, as an
%% Erlang port so that its stdin stays open (the peer switches exit on EOF);
%% recorded in $EVUM_BENCH_TMP/switch-pgids with Dir, which its command line
%% must name, for bench/run's sweep. stop_peer_switch/1 kills it and removes
%% Dir.
start_peer(Kind, Cmd, Args, Dir) ->
    Port = open_port({spawn_executable, "/bin/sh"}, [{args, ["-c", Cmd, "sh" | Args]}, binary, stream, exit_status]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    ok = file:write_file(filename:join(tmp_base(), "switch-pgids"), [integer_to_list(OsPid), " ", Dir, "\n"],
                         [append]),
    #{kind => Kind, port => Port, pgid => OsPid, dir => Dir}.

peer_ctl(#{ctl := Ctl}) -> Ctl.

with_peer_switch(Kind, Tmp, Tag, Fun) ->
    P = start_peer_switch(Kind, Tmp, Tag),
    try
        Fun(P)
    after
        stop_peer_switch(P)
    end.

%% Waits until the peer listens on Ctl: both peers bind the socket before they
%% listen, so a connect between the two is refused although the file exists.
wait_socket(#{ctl := Ctl, port := Port, kind := Kind} = P, Ms) ->
    case listening(Ctl) of
        true -> ok;
        false when Ms =< 0 -> error({no_control_socket, Kind, Ctl});
        _ ->
            receive
                {Port, {exit_status, St}} -> error({peer_switch_exited, Kind, St})
            after 20 -> wait_socket(P, Ms - 20)
            end
    end.

%% Whether a unix socket bound at Path listens: its line in /proc/net/unix
%% ("Num RefCount Protocol Flags Type St Inode Path") has the accept flag
%% (__SO_ACCEPTCON, 16#10000) set.
listening(Path) ->
    {ok, Table} = file:read_file("/proc/net/unix"),
    Want = list_to_binary(Path),
    lists:any(fun(Line) ->
                      case binary:split(Line, <<" ">>, [global, trim_all]) of
                          [_, _, _, Flags, _, _, _, Want] -> binary_to_integer(Flags, 16) band 16#10000 =/= 0;
                          _ -> false
                      end
              end,
              binary:split(Table, <<"\n">>, [global])).

stop_peer_switch(#{port := Port, pgid := Pgid, dir := Dir}) ->
    kill_group(Port, Pgid, Dir, 5000, peer_switch_left).

%% Two busybox guests on evum's switch over the daemon transport, two on a
%% fresh uml_switch, two on evum's switch over the bess transport (vec0)
%% pinned to two CPUs with {cpu, auto} (see README), two more over bess
%% left where the host scheduler puts them, as all the others are, and two
%% over bess on a switch of their own, the guests pinned to two CPUs and
%% the switch's thread to the receiver's (README, `cpu'); and the ping
%% pair, each of its guests on evum's switch, on the uml_switch and on a
%% second uml_switch (the A/A comparison: what two identical switches
%% differ by in this run). All twelve are up at once; the ping and TCP runs
%% alternate between the switches and the pairs.
guests(S, Tmp) ->
    Runs = env_int("EVUM_BENCH_SWITCH_TCP_RUNS", 5),
    MB = env_int("EVUM_BENCH_SWITCH_TCP_MB", 128),
    {Sender, Receiver} = two_cpus(),
    {ok, Placed} = evum_switch:start([{name, evum_bench_placed_switch}, {cpu, Receiver}]),
    try
        guests(S, Placed, {Sender, Receiver}, Tmp, Runs, MB)
    after
        catch evum_switch:stop(Placed)
    end.

guests(S, Placed, Cpus, Tmp, Runs, MB) ->
    with_peer_switch(uml_switch, Tmp, "uml-guests", fun(Uml) ->
        with_peer_switch(uml_switch, Tmp, "uml-guests-2", fun(Uml2) ->
            guest_pairs(S, Placed, Cpus, {peer_ctl(Uml), peer_ctl(Uml2)}, Runs, MB)
        end)
    end).

guest_pairs(S, Placed, {Sender, Receiver}, {UCtl, UCtl2}, Runs, MB) ->
    Pairs = [
        {evum, "eth0", [guest(evum_bench_sw_e1, [{switch, S}]), guest(evum_bench_sw_e2, [{switch, S}])]},
        {uml_switch, "eth0", [guest(evum_bench_sw_u1, [{eth, 0, "daemon,02:ee:00:00:00:01,unix," ++ UCtl}]),
                              guest(evum_bench_sw_u2, [{eth, 0, "daemon,02:ee:00:00:00:02,unix," ++ UCtl}])]},
        {evum_bess, "vec0", [guest(evum_bench_sw_b1, [{switch, S}, {transport, bess}, {cpu, auto}]),
                             guest(evum_bench_sw_b2, [{switch, S}, {transport, bess}, {cpu, auto}])]},
        {bess_unpinned, "vec0", [guest(evum_bench_sw_f1, [{switch, S}, {transport, bess}]),
                                 guest(evum_bench_sw_f2, [{switch, S}, {transport, bess}])]},
        {bess_placed, "vec0", [guest(evum_bench_sw_p1, [{switch, Placed}, {transport, bess}, {cpu, Sender}]),
                               guest(evum_bench_sw_p2, [{switch, Placed}, {transport, bess}, {cpu, Receiver}])]}
    ],
    %% The ping comparison's own pair: each guest on all three switches
    %% at once, eth0 on evum's, eth1 on uml_switch, eth2 on the second
    %% uml_switch, so that every switch is measured between the same two
    %% guests (two pairs of guests differ by more than two switches do).
    Pinger = [guest(Label, [{switch, S},
                            {eth, 1, "daemon,02:ee:00:00:01:0" ++ N ++ ",unix," ++ UCtl},
                            {eth, 2, "daemon,02:ee:00:00:02:0" ++ N ++ ",unix," ++ UCtl2}])
              || {Label, N} <- [{evum_bench_sw_x1, "1"}, {evum_bench_sw_x2, "2"}]],
    try
        guest_runs(Pairs, Pinger, Runs, MB)
    after
        [catch evm:stop(Vm) || Vm <- Pinger ++ [Vm || {_, _, Two} <- Pairs, Vm <- Two]],
        flush()
    end.

%% Two CPUs this node may run on (the same one twice on a single CPU), for
%% a sending and a receiving guest.
two_cpus() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    {match, [List]} = re:run(Status, "Cpus_allowed_list:\\s*(\\S+)", [{capture, all_but_first, list}]),
    Cpus = lists:append([
        case [list_to_integer(N) || N <- string:split(Range, "-")] of
            [A] -> [A];
            [A, B] -> lists:seq(A, B)
        end
     || Range <- string:split(List, ",", all)
    ]),
    {hd(Cpus), lists:last(Cpus)}.

guest(Label, Net) ->
    {ok, Vm} = evm:create([{label, Label} | Net]),
    #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
    note_pgid(OsPid, Umid),
    Vm.

guest_runs(Pairs, Pinger, Runs, MB) ->
    [
        begin
            {IpA, IpB} = addresses(Kind),
            {ok, 0, _} = evum:cmd(A, ["ifconfig ", If, " ", IpA, " netmask 255.255.255.0 up"]),
            {ok, 0, _} = evum:cmd(B, ["ifconfig ", If, " ", IpB, " netmask 255.255.255.0 up"]),
            %% ARP, and the switch learning both MACs.
            {ok, 0, _} = evum:cmd(A, ["ping -c 2 -W 3 ", IpB], 20000)
        end
     || {Kind, If, [A, B]} <- Pairs
    ],
    [X1, X2] = Pinger,
    Arms = [
        begin
            {ok, 0, _} = evum:cmd(X1, ["ifconfig ", If, " ", Net, ".21 netmask 255.255.255.0 up"]),
            {ok, 0, _} = evum:cmd(X2, ["ifconfig ", If, " ", Net, ".22 netmask 255.255.255.0 up"]),
            {ok, 0, _} = evum:cmd(X1, ["ping -c 2 -W 3 ", Net, ".22"], 20000),
            {Kind, Net ++ ".22"}
        end
     || {Kind, If, Net} <- [{evum, "eth0", "10.0.0"}, {uml_switch, "eth1", "10.0.1"}, {uml_switch_2, "eth2", "10.0.2"}]
    ],
    %% Ping: many short runs, over the three switches in turn, each round
    %% in the next of the six orders (each switch as often right after
    %% each other); each run's median reply and average are one sample
    %% each. A run's median moves by up to a tenth from one run to the
    %% next, alike over any switch, so one run decides nothing: see
    %% no_regression/4. Each pair pings once too, for show.
    PingRuns = env_int("EVUM_BENCH_SWITCH_PING_RUNS", 16),
    Orders = permutations(Arms),
    Order = lists:append([lists:nth((I - 1) rem length(Orders) + 1, Orders) || I <- lists:seq(1, PingRuns)]),
    Pings = [{Kind, ping_run(Kind, X1, Ip)} || {Kind, Ip} <- Order],
    PairPings = [{Kind, ping_run(pair_label(Kind), A, element(2, addresses(Kind)))} || {Kind, _, [A, _]} <- Pairs],
    RunMedians = fun(Kind) -> [median(Ts) || {K, {_, Ts}} <- Pings, K =:= Kind] end,
    RunAverages = fun(Kind) -> [Avg || {K, {Avg, _}} <- Pings, K =:= Kind] end,
    Rtt = maps:from_list([{Kind, {mean([Avg || {K, {Avg, _}} <- Ps, K =:= Kind]),
                                  median(lists:append([Ts || {K, {_, Ts}} <- Ps, K =:= Kind]))}}
                          || {Ps, Kinds} <- [{Pings, [evum, uml_switch]}, {PairPings, [evum_bess]}], Kind <- Kinds]),
    %% One uncounted 32 MiB transfer per pair first, as iperf3's --omit
    %% leaves out a stream's start: the first stream between two freshly
    %% booted guests was the slowest of its series for most pairs and runs
    %% (for every pair in one run, by up to a half).
    [tcp_run(Kind, A, B, 4999, 32, 0) || {Kind, _, [A, B]} <- Pairs],
    Tcp = lists:foldl(
        fun(I, Acc) ->
            lists:foldl(
                fun({Kind, _, [A, B]}, Acc1) ->
                    Mbps = tcp_run(Kind, A, B, 5000 + I, MB, I),
                    maps:update_with(Kind, fun(L) -> [Mbps | L] end, [Mbps], Acc1)
                end,
                Acc,
                rotate(Pairs, (I - 1) rem length(Pairs))
            )
        end,
        #{},
        lists:seq(1, Runs)
    ),
    #{rtt => {maps:get(evum, Rtt), maps:get(uml_switch, Rtt)},
      run_medians => {RunMedians(evum), RunMedians(uml_switch), RunMedians(uml_switch_2)},
      run_averages => {RunAverages(evum), RunAverages(uml_switch), RunAverages(uml_switch_2)},
      bess_rtt => maps:get(evum_bess, Rtt),
      pings => length([K || {K, _} <- Pings, K =:= evum]),
      tcp => {median(maps:get(evum, Tcp)), median(maps:get(uml_switch, Tcp))},
      bess_tcp => median(maps:get(evum_bess, Tcp)),
      bess_placed_tcp => median(maps:get(bess_placed, Tcp)),
      bess_unpinned_tcp => median(maps:get(bess_unpinned, Tcp))}.

%% How a TCP run is printed: run 0 is the uncounted warm-up.
run_name(0) -> "warmup";
run_name(I) -> "run " ++ integer_to_list(I).

%% How a pair's own ping run is printed, apart from the ping pair's.
pair_label(Kind) -> list_to_atom(atom_to_list(Kind) ++ "_pair").

%% Every order of L's elements.
permutations([]) -> [[]];
permutations(L) -> [[H | T] || H <- L, T <- permutations(L -- [H])].

%% A pair's two guest addresses: the pairs on evum's switch share it.
addresses(evum_bess) -> {"10.0.0.3", "10.0.0.4"};
addresses(bess_unpinned) -> {"10.0.0.5", "10.0.0.6"};
addresses(bess_placed) -> {"10.0.0.7", "10.0.0.8"};
addresses(_) -> {"10.0.0.1", "10.0.0.2"}.

%% busybox ping's average, and every reply's time (for a median).
ping_run(Kind, Vm, IpB) ->
    {ok, 0, Out} = evum:cmd(Vm, ["ping -c 25 -i 0.05 ", IpB], 30000),
    {match, [Min, Avg, Max]} =
        re:run(Out, "min/avg/max = ([0-9.]+)/([0-9.]+)/([0-9.]+) ms", [{capture, all_but_first, list}]),
    {match, [Rx]} = re:run(Out, "(\\d+) packets received", [{capture, all_but_first, list}]),
    Times = case re:run(Out, "time=([0-9.]+) ms", [global, {capture, all_but_first, list}]) of
        {match, Ts} -> [list_to_float(T) || [T] <- Ts];
        nomatch -> []
    end,
    io:format("  ~-18s ping -c 25 -i 0.05: min/avg/max ~s/~s/~s ms, median ~.3f ms, ~s of 25 answered~n",
              [Kind, Min, Avg, Max, median(Times), Rx]),
    {list_to_float(Avg), Times}.

%% One TCP stream of MB MiB from guest A to guest B, both ends busybox
%% `nc -e dd' (a `dd | nc' pipeline is the limit itself, see UML-NOTES);
%% timed by busybox `time' in A (10 ms resolution).
tcp_run(Kind, A, B, Port, MB, I) ->
    P = integer_to_list(Port),
    {ok, 0, _} = evum:cmd(B, ["nc -l -p ", P, " -e dd of=/dev/null bs=64k >/dev/null 2>&1 </dev/null &"]),
    ok = wait_listening(B, P, 50),
    T0 = now_us(),
    {_, IpB} = addresses(Kind),
    {ok, 0, Out} = evum:cmd(A, ["time nc ", IpB, " ", P, " -e dd if=/dev/zero bs=64k count=", integer_to_list(16 * MB)],
                            120000),
    Wall = (now_us() - T0) / 1.0e6,
    {match, [Min, Sec]} = re:run(Out, "real\\s+(\\d+)m\\s*([0-9.]+)s", [{capture, all_but_first, list}]),
    {match, [Recs]} = re:run(Out, "(\\d+)\\+0 records out", [{capture, all_but_first, list}]),
    Real = list_to_integer(Min) * 60 + list_to_float(Sec),
    Bytes = list_to_integer(Recs) * 65536,
    Mbps = Bytes * 8 / max(0.01, Real) / 1.0e6,
    io:format("  ~-6s ~-10s TCP: ~b MiB in ~.2f s (host-side ~.2f s) = ~.1f Mbit/s~n",
              [run_name(I), Kind, Bytes div 1048576, Real, Wall, Mbps]),
    Mbps.

wait_listening(_Vm, P, 0) -> error({not_listening, P});
wait_listening(Vm, P, N) ->
    case evum:cmd(Vm, ["netstat -ltn | grep -q ':", P, " '"]) of
        {ok, 0, _} -> ok;
        _ ->
            timer:sleep(50),
            wait_listening(Vm, P, N - 1)
    end.

%%% 5. Disk -----------------------------------------------------------------

%% Boot to the console prompt from a cached ext4 image (built from the host's
%% busybox) with a fresh copy-on-write disk each time: evm:create/1 with a
%% fresh label versus a bare `linux' with evum's own command line and a
%% fresh COW over the same image. The image, the cache and the labels' disks
%% are all in $EVUM_BENCH_TMP.
disk(Tmp) ->
    Runs = env_int("EVUM_BENCH_DISK_BOOTS", 10),
    header(io_lib:format("disk: ~b boots each from an ext4 image with a fresh copy-on-write disk, interleaved",
                         [Runs])),
    Dir = filename:join(Tmp, "disk"),
    disk_setup(Dir),
    {ok, _} = application:ensure_all_started(evum),
    T0 = now_us(),
    {ok, Base} = evm:fetch(?DISK_DIST),
    io:format("image ~s built with mke2fs in ~.3f s (from_dir, 64M)~n", [Base, (now_us() - T0) / 1.0e6]),
    {Template, WarmUp} = evum_template([{dist, ?DISK_DIST}]),
    io:format("evum's command line (from /proc/<os_pid>/cmdline of a VM it started):~n  ~s~n",
              [lists:join(" ", [?KERNEL | Template])]),
    io:format("bare = setarch x86_64 -R " ?KERNEL " <the same args, fresh umid/uml_dir/hostfs, "
              "ubd0=<fresh COW>,~s>~n", [Base]),
    io:format("READY = the guest's \"\\x01EVUM READY\" line on ssl0; prompt = a console message ending in \"# \" "
              "(usable = both seen)~n"),
    Boot = fun
        (evum, I) -> disk_evum_boot(I);
        (bare, I) -> bare_boot(disk, Template, Tmp, I, #{cow_over => binary_to_list(Base), prompt => true})
    end,
    _ = Boot(bare, 0),
    io:format("warm-up done (evum first boot from the image: ~.3f s)~n", [WarmUp]),
    Results = rounds([evum, bare], Runs, fun(Kind, I) ->
        R = Boot(Kind, I),
        maps:get(cow, R) orelse error({no_cow_disk, Kind, I}),
        R
    end),
    Evum = maps:get(evum, Results),
    Bare = maps:get(bare, Results),
    %% Usable: both the command channel (READY) and the console's prompt.
    Usable = fun(#{ready := R, prompt := P}) -> max(R, P) end,
    io:format("~n"),
    stat_line("evum: evm:create/1 returns (guest READY)", [R || #{ready := R} <- Evum]),
    stat_line("evum: READY and console prompt", [Usable(R) || R <- Evum]),
    stat_line("evum: evm:stop/1 + evm:destroy/1", [S || #{stop := S} <- Evum]),
    stat_line("bare: spawn to READY", [R || #{ready := R} <- Bare]),
    stat_line("bare: READY and console prompt", [Usable(R) || R <- Bare]),
    cpu_stat_line("evum: host CPU busy until usable", [C || #{cpu := C} <- Evum]),
    cpu_stat_line("bare: host CPU busy until usable", [C || #{cpu := C} <- Bare]),
    Paired = fun(F) -> median([F(E) / F(B) || {E, B} <- lists:zip(Evum, Bare)]) end,
    Ready = fun(#{ready := R}) -> R end,
    io:format("evum/bare within each round: READY median ~.3f, usable median ~.3f~n",
              [Paired(Ready), Paired(Usable)]),
    Med = fun(F, L) -> median([F(R) || R <- L]) end,
    io:format("~n"),
    ratio("disk evum/bare boot to READY (median)", Med(Ready, Evum) / Med(Ready, Bare), '=<', 1.05),
    ratio("disk evum/bare boot to READY and prompt (median)", Med(Usable, Evum) / Med(Usable, Bare), '=<', 1.05),
    figure("disk evum median, READY and prompt (bare's x 1.05)", Med(Usable, Evum), "s", '=<',
           round(1050 * Med(Usable, Bare)) / 1000),
    ok.

%% The image's tree (busybox and a link per applet, the directories the
%% guest's init mounts on), a configuration naming it, and evum's cache and
%% state directories, all under Dir.
disk_setup(Dir) ->
    Tree = filename:join(Dir, "tree"),
    [ok = filelib:ensure_path(filename:join(Tree, D)) || D <- ["bin", "root", "tmp", "run", "proc", "sys", "dev"]],
    {ok, _} = file:copy("/bin/busybox", filename:join(Tree, "bin/busybox")),
    ok = file:change_mode(filename:join(Tree, "bin/busybox"), 8#755),
    Applets = string:lexemes(os:cmd("/bin/busybox --list"), "\n"),
    [ok = file:make_symlink("busybox", filename:join([Tree, "bin", A])) || A <- Applets, A =/= "busybox"],
    Config = filename:join(Dir, "evm.toml"),
    ok = file:write_file(Config, io_lib:format("[image.~s]~nfrom_dir = \"~s\"~nsize = \"64M\"~n", [?DISK_DIST, Tree])),
    ok = application:load(evum),
    ok = application:set_env(evum, config, Config),
    ok = application:set_env(evum, cache_dir, filename:join(Dir, "cache")),
    ok = application:set_env(evum, state_dir, filename:join(Dir, "state")).

%% One evum boot with a fresh label, so a fresh copy-on-write disk: create
%% until it returns (READY), and until the console's prompt has arrived too
%% (if it came before create returned, that is when it counts); then stop
%% and destroy the label's disk.
disk_evum_boot(I) ->
    flush(),
    Label = list_to_atom("evum_bench_disk_" ++ integer_to_list(I)),
    C0 = cpu_busy_s(),
    T0 = now_us(),
    {ok, Vm} = evm:create([{label, Label}, {dist, ?DISK_DIST}]),
    T1 = now_us(),
    T2 =
        try
            ok = wait_prompt(10000),
            now_us()
        catch
            Class:Reason:Stack ->
                catch evm:stop(Vm),
                catch evm:destroy(Label),
                erlang:raise(Class, Reason, Stack)
        end,
    C1 = cpu_busy_s(),
    #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
    note_pgid(OsPid, Umid),
    Cow = filename:join([evum_disk:dir(), "disks", atom_to_list(Label), atom_to_list(?DISK_DIST) ++ ".cow"]),
    IsCow = filelib:is_regular(Cow),
    ok = evm:stop(Vm),
    ok = evm:destroy(Label),
    T3 = now_us(),
    [] = wait_gone([OsPid], 5000),
    false = filelib:is_file(Cow),
    flush(),
    #{ready => (T1 - T0) / 1.0e6, prompt => (T2 - T0) / 1.0e6, stop => (T3 - T2) / 1.0e6, cpu => C1 - C0,
      cow => IsCow}.

wait_prompt(Timeout) ->
    receive
        Line when is_binary(Line) ->
            case binary:longest_common_suffix([Line, <<"# ">>]) of
                2 -> ok;
                _ -> wait_prompt(Timeout)
            end
    after Timeout -> error(no_console_prompt)
    end.

%%% 6. Gateway --------------------------------------------------------------

%% TCP throughput from the host into a guest through a port forward: evum's
%% gateway (libslirp on a thread of evum's, a port of evum's switch) versus
%% libslirp in Debian's vde_plug (libvdeplug_slirp) on a vde_switch. The
%% guests are alike (evum's busybox, eth0 over the daemon transport,
%% 10.0.2.15); the sender is this node (gen_tcp to 127.0.0.1); the clock runs
%% until the guest's receiver has read everything and closed. No uplink is
%% used: traffic is 127.0.0.1 to our own guests only.
gateway(Tmp) ->
    Runs = env_int("EVUM_BENCH_GATEWAY_RUNS", 5),
    MB = env_int("EVUM_BENCH_GATEWAY_MB", 64),
    header(io_lib:format("gateway: ~b MiB from 127.0.0.1 into a guest through a port forward, ~b runs each, "
                         "alternating~s", [MB, Runs, netns_tag()])),
    Qlen = string:trim(os:cmd("cat /proc/sys/net/unix/max_dgram_qlen")),
    case netns() of
        "" ->
            io:format("host net.unix.max_dgram_qlen = ~s (left as it is: it limits every daemon-transport hop)~n",
                      [Qlen]);
        _ ->
            io:format("private network namespace (bench/run: unshare --net, only lo, up), its "
                      "net.unix.max_dgram_qlen = ~s (the host's is untouched)~n", [Qlen])
    end,
    [filelib:is_regular(F) orelse error({missing, F, "apt-get install vdeplug libvdeplug-slirp"})
     || F <- [?VDE_PLUG, ?VDE_SLIRP_PLUGIN]],
    {ok, _} = application:ensure_all_started(evum),
    Evum = guest(evum_bench_gw_evum, [{net, user}]),
    try
        {ok, EPort} = evum:forward(Evum, {tcp, 0, list_to_integer(?GW_GUEST_PORT)}),
        io:format("evum: evm:create([{net, user}]), evum:forward(Vm, {tcp, 0, ~s}) -> 127.0.0.1:~b~n",
                  [?GW_GUEST_PORT, EPort]),
        with_peer_switch(vde_switch, Tmp, "vde-gw", fun(Vde) ->
            Peer = guest(evum_bench_gw_peer, [{eth, 0, "daemon,02:ee:00:00:00:0f,unix," ++ peer_ctl(Vde)}]),
            try
                {ok, 0, _} = evum:cmd(Peer, "ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up"),
                with_slirp_plug(Vde, fun(PPort) ->
                    gateway_runs(#{evum => {Evum, EPort}, vde_slirp => {Peer, PPort}}, Runs, MB)
                end)
            after
                catch evm:stop(Peer)
            end
        end)
    after
        catch evm:stop(Evum),
        flush()
    end.

%% Targets: #{Kind => {Vm, HostPort}}.
gateway_runs(Targets, Runs, MB) ->
    Run = fun(Kind, I, Mb) ->
        {Vm, Port} = maps:get(Kind, Targets),
        gateway_run(Kind, Vm, Port, Mb, I)
    end,
    %% Unmeasured: ARP, the first connection through each forward.
    [Run(Kind, 0, 1) || Kind <- [evum, vde_slirp]],
    Results = rounds([evum, vde_slirp], Runs, fun(Kind, I) -> Run(Kind, I, MB) end),
    E = maps:get(evum, Results),
    P = maps:get(vde_slirp, Results),
    io:format("~n"),
    rate_line("evum gateway: Mbit/s host to guest", E),
    rate_line("vde_plug slirp: Mbit/s host to guest", P),
    io:format("~n"),
    Tag = netns_tag(),
    figure("gateway evum host-to-guest TCP (vde_plug slirp's)" ++ Tag, median(E), "Mbit/s", '>=', round(median(P))),
    ratio("gateway TCP Mbit/s evum/vde_plug slirp (median)" ++ Tag, median(E) / median(P), '>=', 1.0),
    ok.

%% One transfer: the guest listens (`nc -e dd', detached), this node connects
%% to the forward, sends MB MiB in 64 KiB writes and shuts its side down; the
%% time runs from the connect until the guest's dd has read everything and
%% exited (its close reaches us as the end of the connection). dd's count of
%% full 64 KiB blocks checks that everything arrived.
gateway_run(Kind, Vm, HostPort, MB, I) ->
    {ok, 0, _} = evum:cmd(Vm, ["setsid nc -l -p ", ?GW_GUEST_PORT, " -e sh -c "
                               "'dd of=/dev/null bs=64k iflag=fullblock 2>/tmp/dd.log' </dev/null >/dev/null 2>&1 &"]),
    ok = wait_listening(Vm, ?GW_GUEST_PORT, 50),
    Chunk = binary:copy(<<0>>, 65536),
    T0 = now_us(),
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, HostPort, [binary, {active, false}], 10000),
    End =
        try
            [ok = gen_tcp:send(S, Chunk) || _ <- lists:seq(1, 16 * MB)],
            ok = gen_tcp:shutdown(S, write),
            %% The peer at the host's qlen has taken 30 s for 64 MiB.
            gen_tcp:recv(S, 0, max(120000, 5000 * MB))
        after
            gen_tcp:close(S)
        end,
    Secs = (now_us() - T0) / 1.0e6,
    {ok, 0, Log} = evum:cmd(Vm, "cat /tmp/dd.log"),
    Blocks = integer_to_binary(16 * MB),
    case {End, binary:match(Log, <<Blocks/binary, "+0 records in">>)} of
        {{error, Closed}, {_, _}} when Closed =:= closed; Closed =:= econnreset -> ok;
        _ -> error({gateway_transfer_incomplete, Kind, End, Log})
    end,
    Mbps = MB * 8 * 1.048576 / Secs,
    I > 0 andalso io:format("  run ~b ~-10s ~b MiB in ~.3f s = ~.1f Mbit/s~n", [I, Kind, MB, Secs, Mbps]),
    Mbps.

%% libslirp as a port of the vde_switch: `vde_plug vde://DIR slirp://...'
%% with a forward 127.0.0.1:HostPort -> 10.0.2.15:7777 (IPv4 only), in its
%% own process group, listed in switch-pgids under the switch's directory
%% (its command line names it) for bench/run's sweep.
with_slirp_plug(#{dir := Dir}, Fun) ->
    HostPort = free_port(),
    Slirp = lists:flatten(io_lib:format("slirp:///v4/tcpfwd=127.0.0.1:~b:10.0.2.15:~s", [HostPort, ?GW_GUEST_PORT])),
    Plug = start_peer(vde_slirp, "exec " ?VDE_PLUG " \"vde://$1\" \"$2\" </dev/null 2>/dev/null", [Dir, Slirp], Dir),
    try
        wait_host_listening(Plug, HostPort, 5000),
        io:format("vde_slirp: pid ~b, ~s ~s on ~s~n", [maps:get(pgid, Plug), ?VDE_PLUG, "vde://" ++ Dir, Slirp]),
        Fun(HostPort)
    after
        stop_peer_switch(Plug)
    end.

%% A port of 127.0.0.1 that was free a moment ago.
free_port() ->
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(L),
    ok = gen_tcp:close(L),
    Port.

%% Waits until something listens on 127.0.0.1:Port (/proc/net/tcp, state 0A).
wait_host_listening(#{port := P, kind := Kind} = Peer, Port, Ms) ->
    {ok, Tcp} = file:read_file("/proc/net/tcp"),
    Local = list_to_binary(io_lib:format("0100007F:~4.16.0B 00000000:0000 0A", [Port])),
    case binary:match(Tcp, Local) of
        {_, _} -> ok;
        nomatch when Ms =< 0 -> error({not_listening, Kind, Port});
        nomatch ->
            receive
                {P, {exit_status, St}} -> error({peer_exited, Kind, St})
            after 20 -> wait_host_listening(Peer, Port, Ms - 20)
            end
    end.

%%% Bare UML processes and their process groups --------------------------------

fresh_identity(Template, Tmp, Tag) ->
    Umid = lists:flatten(io_lib:format("evum-bench-~s-~s", [os:getpid(), Tag])),
    UmlDir = filename:join(Tmp, "uml-" ++ lists:flatten(Tag)),
    ok = filelib:ensure_dir(filename:join(UmlDir, "x")),
    Args = [
        case A of
            "umid=" ++ _ -> "umid=" ++ Umid;
            "uml_dir=" ++ _ -> "uml_dir=" ++ UmlDir;
            "hostfs=" ++ _ -> "hostfs=" ++ filename:join([UmlDir, Umid, "no-hostfs"]);
            _ -> A
        end
     || A <- Template
    ],
    {Umid, UmlDir, Args}.

%% Kills the bare UML's whole process group (the port child is a session
%% leader, so its pid is the group id), waits until it is gone and removes
%% its uml_dir.
kill_bare(Port, Pgid, UmlDir) ->
    kill_group(Port, Pgid, UmlDir, 10000, bare_uml_left).

%% Kills the process group a port started, waits up to `Wait' ms until it is
%% gone, removes `Dir', and fails with `Why' if anything of it is left.
kill_group(Port, Pgid, Dir, Wait, Why) ->
    _ = os:cmd("/bin/kill -s KILL -- -" ++ integer_to_list(Pgid) ++ " 2>/dev/null"),
    receive
        {Port, {exit_status, _}} -> ok
    after 5000 -> ok
    end,
    catch port_close(Port),
    flush_port(Port),
    Left = wait_gone([Pgid], Wait),
    _ = file:del_dir_r(Dir),
    case Left of
        [] -> ok;
        _ -> error({Why, Left})
    end.

flush_port(Port) ->
    receive
        {Port, _} -> flush_port(Port)
    after 0 -> ok
    end.

%% Processes (not zombies) still in any of these process groups, after
%% waiting up to Ms for them to go.
wait_gone(Pgids, Ms) ->
    case live_members(Pgids) of
        [] -> [];
        Left when Ms =< 0 -> Left;
        _ ->
            timer:sleep(20),
            wait_gone(Pgids, Ms - 20)
    end.

live_members(Pgids) ->
    [{P, G} || {P, G, State} <- members(Pgids), State =/= "Z"].

%% {Pid, Pgrp, State} of every process whose process group is in Pgids.
members(Pgids) ->
    Set = sets:from_list(Pgids),
    {ok, Names} = file:list_dir("/proc"),
    lists:filtermap(
        fun(Name) ->
            case string:to_integer(Name) of
                {Pid, []} ->
                    case stat(Pid) of
                        {State, Pgrp} ->
                            case sets:is_element(Pgrp, Set) of
                                true -> {true, {Pid, Pgrp, State}};
                                false -> false
                            end;
                        _ ->
                            false
                    end;
                _ ->
                    false
            end
        end,
        Names
    ).

stat(Pid) ->
    case file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/stat") of
        {ok, B} ->
            %% The command name is in parentheses and may contain anything.
            {Pos, _} = lists:last(binary:matches(B, <<")">>)),
            Rest = binary:part(B, Pos + 2, byte_size(B) - Pos - 2),
            [State, _PPid, Pgrp | _] = binary:split(Rest, <<" ">>, [global]),
            {binary_to_list(State), binary_to_integer(Pgrp)};
        _ ->
            gone
    end.

evum_base() ->
    case os:getenv("XDG_RUNTIME_DIR") of
        Dir when is_list(Dir), Dir =/= "" -> filename:join(Dir, "evum");
        _ ->
            Tmp =
                case os:getenv("TMPDIR") of
                    T when is_list(T), T =/= "" -> T;
                    _ -> "/tmp"
                end,
            filename:join(Tmp, "evum-" ++ string:trim(os:cmd("id -u")))
    end.

%% Seconds of CPU time the whole host has been busy (all cores), from
%% /proc/stat: user, nice, system, irq, softirq, steal.
cpu_busy_s() ->
    {ok, B} = file:read_file("/proc/stat"),
    [Line | _] = binary:split(B, <<"\n">>),
    [<<"cpu">> | Fields] = binary:split(Line, <<" ">>, [global, trim_all]),
    [User, Nice, System, _Idle, _IoWait, Irq, SoftIrq, Steal | _] = [binary_to_integer(F) || F <- Fields],
    (User + Nice + System + Irq + SoftIrq + Steal) / 100.

%% Processes (and threads) the host has created since it booted.
host_forks() ->
    {ok, B} = file:read_file("/proc/stat"),
    {match, [N]} = re:run(B, "^processes (\\d+)", [multiline, {capture, all_but_first, binary}]),
    binary_to_integer(N).

%% UML processes that are not ours (other users' VMs) disturb the figures.
warn_foreign(When) ->
    Mine = ["umid=evum-" ++ os:getpid() ++ "-", "umid=evum-bench-" ++ os:getpid() ++ "-"],
    {ok, Names} = file:list_dir("/proc"),
    Foreign = [
        N
     || N <- Names,
        element(2, string:to_integer(N)) =:= [],
        file:read_file("/proc/" ++ N ++ "/comm") =:= {ok, <<"linux\n">>},
        case file:read_file("/proc/" ++ N ++ "/cmdline") of
            %% Empty once a process has let go of its memory while it
            %% exits: one of the guests this node just stopped, say.
            {ok, <<>>} -> false;
            {ok, C} -> not lists:any(fun(M) -> binary:match(C, list_to_binary(M)) =/= nomatch end, Mine);
            _ -> false
        end
    ],
    case Foreign of
        [] -> ok;
        _ ->
            io:format("WARNING (~s): ~b UML processes of other users are running (pids ~s); "
                      "the figures are disturbed~n", [When, length(Foreign), lists:join(" ", lists:sublist(Foreign, 10))])
    end.

%%% Bookkeeping for bench/run's last-resort clean-up ---------------------------

tmp_base() ->
    case os:getenv("EVUM_BENCH_TMP") of
        Dir when is_list(Dir), Dir =/= "" -> Dir;
        _ -> error("EVUM_BENCH_TMP is not set: run the benchmarks with sh bench/run")
    end.

note_beam_pid(Tmp) ->
    ok = file:write_file(filename:join(Tmp, "beam-pids"), [os:getpid(), "\n"], [append]).

note_pgid(Pgid, Umid) ->
    ok = file:write_file(filename:join(tmp_base(), "pgids"), [integer_to_list(Pgid), " ", Umid, "\n"], [append]).

%%% Figures ---------------------------------------------------------------------

header(Title) ->
    io:format("~n=== ~s ===~n", [Title]).

stat_line(What, L) ->
    io:format("~-44s median ~.3f s  (min ~.3f, max ~.3f, n=~b)~n",
              [What, median(L), lists:min(L), lists:max(L), length(L)]).

rate_line(What, L) ->
    io:format("~-44s median ~b  (min ~b, max ~b, n=~b)~n",
              [What, round(median(L)), round(lists:min(L)), round(lists:max(L)), length(L)]).

ratio(What, R, Op, Target) ->
    io:format("RATIO ~s = ~.3f (target ~s ~p) ~s~n", [What, R, op(Op), Target, verdict(R, Op, Target)]).

figure(What, V, Unit, Op, Target) ->
    Fmt =
        case is_integer(V) of
            true -> "~s = ~b~s (target ~s ~p~s) ~s~n";
            false -> "~s = ~.3f~s (target ~s ~p~s) ~s~n"
        end,
    Sp =
        case Unit of
            "" -> "";
            _ -> " " ++ Unit
        end,
    io:format("FIGURE " ++ Fmt, [What, V, Sp, op(Op), Target, Sp, verdict(V, Op, Target)]).

op('=<') -> "<=";
op('>=') -> ">=".

verdict(V, '=<', T) when V =< T -> "PASS";
verdict(V, '>=', T) when V >= T -> "PASS";
verdict(_, _, _) -> "MISS".

mean([]) -> error(no_samples);
mean(L) -> lists:sum(L) / length(L).

median([]) -> error(no_samples);
median(L) ->
    S = lists:sort(L),
    N = length(S),
    case N rem 2 of
        1 -> lists:nth(N div 2 + 1, S);
        0 -> (lists:nth(N div 2, S) + lists:nth(N div 2 + 1, S)) / 2
    end.

median0([]) -> 0.0;
median0(L) -> median(L).

max0([]) -> 0.0;
max0(L) -> lists:max(L).

%% Fun(Kind, I) for every kind in each of rounds 1..Runs, the order rotating
%% from round to round so no kind always follows the same other one; the
%% results as #{Kind => [Result]}, the last round's first.
rounds(Kinds, Runs, Fun) ->
    lists:foldl(
        fun(I, Acc) ->
            lists:foldl(
                fun(Kind, Acc1) ->
                    R = Fun(Kind, I),
                    maps:update_with(Kind, fun(L) -> [R | L] end, [R], Acc1)
                end,
                Acc,
                rotate(Kinds, I rem length(Kinds))
            )
        end,
        #{},
        lists:seq(1, Runs)
    ).

rotate(L, 0) -> L;
rotate([H | T], N) -> rotate(T ++ [H], N - 1).

env_int(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        "" -> Default;
        V -> list_to_integer(V)
    end.

now_us() -> erlang:monotonic_time(microsecond).

flush() ->
    receive
        _ -> flush()
    after 0 -> ok
    end.

%% Discards messages until none has come for Ms.
quiet(Ms) ->
    receive
        _ -> quiet(Ms)
    after Ms -> ok
    end.
