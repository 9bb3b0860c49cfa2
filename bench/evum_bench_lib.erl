%% @doc What evum's benchmarks share: the kernel and CPU every figure is
%% measured on, timing, medians and means, the A/B comparison, pmap, PSS,
%% bare UML peers and their process groups (recorded for bench/run's
%% sweep), peer switches, and the FIGURE and RATIO lines with their PASS
%% and MISS marks. Each benchmark is a module of its own (evum_bench_boot,
%% ...); evum_bench:main/1 runs one. See bench/README.md.
-module(evum_bench_lib).

-export([
    %% The kernel and CPU
    setup/0, kernel/0, kernel_version/1, debian_kernel/0, guest_kernel/1, on_tag/1,
    %% Timing and statistics
    now_us/0, env_int/2, mean/1, median/1, median0/1, max0/1, rounds/3, rounds/4, rotate/2, pmap/2,
    cpu_busy_s/0, host_forks/0,
    %% Printing
    header/1, stat_line/2, rate_line/2, cpu_stat_line/2, figure/5, figure/6, ratio/4, ratio/5,
    no_regression/4, ab_compare/2,
    %% Mailbox
    flush/0, quiet/1, wait_prompt/1, cleanup_on_error/2,
    %% evum VMs
    evum_template/0, evum_template/1, create_to_prompt/2, guest/2, guest_if/1, wait_listening/3, evum_base/0,
    %% Bare UML peers
    bare_boot/5, fresh_identity/3, kill_bare/3, kill_group/5,
    %% Process groups, PSS, system_monitor
    wait_gone/2, live_members/1, members/1, cpu_ticks/1, pss/1, monitor_start/1, monitor_stop/1, long_report/2,
    timeout/1,
    %% Peer processes and switches
    start_peer/4, with_peer_switch/4, stop_peer_switch/1, peer_ctl/1, start_old_evum_switch/3,
    start_old_evum_switch/4, serve_old_switch/1, netns/0, netns_tag/0,
    %% bench/run's bookkeeping
    tmp_base/0, note_beam_pid/1, note_pgid/2, warn_foreign/1
]).

-define(SETARCH, "/usr/bin/setarch").
-define(READY_MARKER, <<1, "EVUM READY">>).
%% Debian's user-mode-linux 6.1 (EVUM_BENCH_DEBIAN_KERNEL, "" for none): the
%% old default, and the only kernel here with UML's daemon transport
%% (uml_switch, vde_switch peers).
-define(DEBIAN_KERNEL, "/usr/bin/linux").

%%% The kernel and CPU ----------------------------------------------------------

%% Takes the kernel from one place, EVUM_BENCH_KERNEL if set, else the
%% `kernel' app env (evm:create/1's default), and makes it every
%% evm:create/1's default for this node; prints it and the CPU.
setup() ->
    case application:load(evum) of
        ok -> ok;
        {error, {already_loaded, evum}} -> ok
    end,
    Source =
        case os:getenv("EVUM_BENCH_KERNEL") of
            K when is_list(K), K =/= "" ->
                ok = application:set_env(evum, kernel, K),
                "EVUM_BENCH_KERNEL";
            _ ->
                "the evum app env `kernel'"
        end,
    {ok, Kernel} = application:get_env(evum, kernel),
    Path = resolve(Kernel),
    persistent_term:put({?MODULE, kernel}, Path),
    Cpu = cpu(),
    persistent_term:put({?MODULE, cpu}, Cpu),
    io:format("kernel: ~s (from ~s: ~p), version ~s~n", [Path, Source, Kernel, kernel_version(Path)]),
    io:format("CPU: ~s, ~b cores, avx512f: ~s, amx_tile: ~s~n",
              [maps:get(model, Cpu), erlang:system_info(logical_processors_available),
               yes_no(maps:get(avx512f, Cpu)), yes_no(maps:get(amx_tile, Cpu))]).

%% The kernel's path: a name without a slash is looked up on the PATH, as
%% evum does. Anything else (an app env value that names no file) is kept
%% as it is until guest_kernel/1 reads the binary of a running guest.
resolve(evum) ->
    %% evum's own kernel, built by `make deps' (or here, on first use).
    {ok, Path} = evum_kernel:ensure(),
    binary_to_list(Path);
resolve(Kernel) when is_binary(Kernel) -> resolve(binary_to_list(Kernel));
resolve(Kernel) when is_list(Kernel) ->
    case lists:member($/, Kernel) of
        true -> Kernel;
        false ->
            case os:find_executable(Kernel) of
                false -> Kernel;
                Path -> Path
            end
    end;
resolve(Kernel) ->
    lists:flatten(io_lib:format("~p", [Kernel])).

%% The benchmarks' kernel (see setup/0).
kernel() ->
    persistent_term:get({?MODULE, kernel}).

%% The binary's own version string (`linux --version'), cached.
kernel_version(Path) ->
    Key = {?MODULE, version, Path},
    case persistent_term:get(Key, undefined) of
        undefined ->
            V = case filelib:is_regular(Path) of
                true -> string:trim(hd(string:split(os:cmd(shell_quote(Path) ++ " --version 2>&1") ++ "\n", "\n")));
                false -> "unknown"
            end,
            persistent_term:put(Key, V),
            V;
        V ->
            V
    end.

shell_quote(S) -> "'" ++ lists:append([case C of $' -> "'\\''"; _ -> [C] end || C <- S]) ++ "'".

%% Model name and the flags that matter to UML's kernels: Debian's 6.1
%% does not start where amx_tile is present.
cpu() ->
    {ok, Info} = file:read_file("/proc/cpuinfo"),
    Field = fun(Name) ->
        case re:run(Info, "^" ++ Name ++ "\\s*:\\s*(.*)$", [multiline, {capture, all_but_first, list}]) of
            {match, [V]} -> V;
            nomatch -> ""
        end
    end,
    Flags = string:lexemes(Field("flags"), " "),
    #{model => Field("model name"), avx512f => lists:member("avx512f", Flags),
      amx_tile => lists:member("amx_tile", Flags)}.

yes_no(true) -> "yes";
yes_no(false) -> "no".

%% Debian's 6.1 UML where it runs on this host (one probe boot, cached):
%% `{ok, Path}' or `{skip, Reason}'.
debian_kernel() ->
    case persistent_term:get({?MODULE, debian}, undefined) of
        undefined ->
            R = probe_debian(),
            persistent_term:put({?MODULE, debian}, R),
            case R of
                {ok, P} -> io:format("Debian's UML: ~s, version ~s (runs on this host)~n", [P, kernel_version(P)]);
                {skip, Why} -> io:format("Debian's UML 6.1 is left out: ~s~n", [Why])
            end,
            R;
        R ->
            R
    end.

probe_debian() ->
    Cpu = persistent_term:get({?MODULE, cpu}),
    Kernel = case os:getenv("EVUM_BENCH_DEBIAN_KERNEL") of
        false -> ?DEBIAN_KERNEL;
        K -> K
    end,
    case {Kernel, filelib:is_regular(Kernel), maps:get(amx_tile, Cpu)} of
        {"", _, _} ->
            {skip, "EVUM_BENCH_DEBIAN_KERNEL is empty"};
        {_, false, _} ->
            {skip, Kernel ++ " is not there (apt-get install user-mode-linux)"};
        {_, true, true} ->
            {skip, "this CPU has AMX (amx_tile), on which Debian's UML 6.1 does not start"};
        {_, true, false} ->
            case evm:create([{label, evum_bench_debian_probe}, {kernel, Kernel}, {timeout, 30000}]) of
                {ok, Vm} ->
                    #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
                    note_pgid(OsPid, Umid),
                    ok = evm:stop(Vm),
                    flush(),
                    {ok, Kernel};
                Error ->
                    flush(),
                    {skip, lists:flatten(io_lib:format("it did not boot here: ~p", [Error]))}
            end
    end.

%% What a guest runs: `uname -r' and the UML binary (/proc/<pid>/exe);
%% printed, and the binary returned.
guest_kernel(Vm) ->
    #{os_pid := OsPid} = evum:info(Vm),
    {ok, 0, Release} = evum:cmd(Vm, "uname -r"),
    {ok, Exe0} = file:read_link("/proc/" ++ integer_to_list(OsPid) ++ "/exe"),
    Exe = string:replace(Exe0, " (deleted)", "", trailing),
    Path = lists:flatten(Exe),
    io:format("guest: uname -r = ~s, UML binary ~s~n", [string:trim(Release), Path]),
    Path.

%% What a figure was measured on: the kernel (a path, several for a ratio
%% across kernels, none for a figure that boots no guest) and the CPU.
on_tag(Paths) ->
    Ks = case Paths of
        [] -> "none (no guest)";
        _ -> lists:join(" vs ", [kernel_version(P) || P <- Paths])
    end,
    #{model := Model, avx512f := Avx, amx_tile := Amx} = persistent_term:get({?MODULE, cpu}),
    Flags = [F || {F, true} <- [{" avx512f", Avx}, {" amx_tile", Amx}]],
    lists:flatten(["[kernel ", Ks, " | ", Model, Flags, "]"]).

%%% Timing and statistics -------------------------------------------------------

now_us() -> erlang:monotonic_time(microsecond).

env_int(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        "" -> Default;
        V -> list_to_integer(V)
    end.

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
%% results as #{Kind => [Result]}, the last round's first. Round I starts
%% with the kind at (I + Shift) rem length(Kinds) (rounds/3: Shift 0).
rounds(Kinds, Runs, Fun) ->
    rounds(Kinds, Runs, Fun, 0).

rounds(Kinds, Runs, Fun, Shift) ->
    lists:foldl(
        fun(I, Acc) ->
            lists:foldl(
                fun(Kind, Acc1) ->
                    R = Fun(Kind, I),
                    maps:update_with(Kind, fun(L) -> [R | L] end, [R], Acc1)
                end,
                Acc,
                rotate(Kinds, (I + Shift) rem length(Kinds))
            )
        end,
        #{},
        lists:seq(1, Runs)
    ).

rotate(L, 0) -> L;
rotate([H | T], N) -> rotate(T ++ [H], N - 1).

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

%%% Printing ---------------------------------------------------------------------

header(Title) ->
    io:format("~n=== ~s ===~n", [Title]).

stat_line(What, L) ->
    io:format("~-44s median ~.3f s  (min ~.3f, max ~.3f, n=~b)~n",
              [What, median(L), lists:min(L), lists:max(L), length(L)]).

rate_line(What, L) ->
    io:format("~-44s median ~b  (min ~b, max ~b, n=~b)~n",
              [What, round(median(L)), round(lists:min(L)), round(lists:max(L)), length(L)]).

cpu_stat_line(What, L) ->
    io:format("~-44s median ~.2f CPU-s  (min ~.2f, max ~.2f, n=~b)~n",
              [What, median(L), lists:min(L), lists:max(L), length(L)]).

%% A ratio against a peer; /4 measured on the benchmarks' kernel, /5 on
%% the kernels given (paths).
ratio(What, R, Op, Target) ->
    ratio(What, R, Op, Target, [kernel()]).

ratio(What, R, Op, Target, On) ->
    io:format("RATIO ~s = ~.3f (target ~s ~p) ~s ~s~n", [What, R, op(Op), Target, verdict(R, Op, Target), on_tag(On)]).

figure(What, V, Unit, Op, Target) ->
    figure(What, V, Unit, Op, Target, [kernel()]).

figure(What, V, Unit, Op, Target, On) ->
    Fmt =
        case is_integer(V) of
            true -> "~s = ~b~s (target ~s ~p~s) ~s ~s~n";
            false -> "~s = ~.3f~s (target ~s ~p~s) ~s ~s~n"
        end,
    Sp =
        case Unit of
            "" -> "";
            _ -> " " ++ Unit
        end,
    io:format("FIGURE " ++ Fmt, [What, V, Sp, op(Op), Target, Sp, verdict(V, Op, Target), on_tag(On)]).

op('=<') -> "<=";
op('>=') -> ">=".

verdict(V, '=<', T) when V =< T -> "PASS";
verdict(V, '>=', T) when V >= T -> "PASS";
verdict(_, _, _) -> "MISS".

%% The target "no worse than the peer", judged as Firecracker's A/B tests
%% judge a change (tools/ab_test.py): a regression is a difference that is
%% both significant, p < 0.01, and larger than 5% of the peer's mean
%% (Firecracker's default is 20%). Xs and Us hold a figure per run, the Nth
%% of each measured in the same round. Printed with the kernels in On.
no_regression({What, On}, Stat, Xs, Us) ->
    {R, P, Regressed} = ab_compare(Xs, Us),
    Verdict =
        if
            %% Then no outcome reaches p < 0.01: a PASS would mean nothing.
            length(Xs) < 7 -> "UNDECIDED (fewer than 7 rounds)";
            Regressed -> "MISS";
            true -> "PASS"
        end,
    io:format("RATIO ~s (mean of ~b ~s) = ~.3f (target: no regression, i.e. not both p < 0.01 and "
              "above 1.05; p = ~.3f) ~s ~s~n", [What, length(Xs), Stat, R, P, Verdict, on_tag(On)]).

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

%%% Mailbox ----------------------------------------------------------------------

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

%% Waits for the owner's console message that is the shell's prompt.
wait_prompt(Timeout) ->
    receive
        Line when is_binary(Line) ->
            case binary:longest_common_suffix([Line, <<"# ">>]) of
                2 -> ok;
                _ -> wait_prompt(Timeout)
            end
    after Timeout -> error(no_console_prompt)
    end.

%% Fun(); if it fails, Cleanup() first (its own failure ignored), then the
%% failure goes on.
cleanup_on_error(Fun, Cleanup) ->
    try
        Fun()
    catch
        Class:Reason:Stack ->
            catch Cleanup(),
            erlang:raise(Class, Reason, Stack)
    end.

%%% evum VMs ---------------------------------------------------------------------

%% Boots one VM through evum and returns its UML binary and command line
%% (from /proc/<os_pid>/exe and cmdline) and the time the whole first
%% create took.
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
    Exe = guest_kernel(Vm),
    {ok, Cmdline} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/cmdline"),
    [_Kernel | Args] = [binary_to_list(A) || A <- binary:split(Cmdline, <<0>>, [global, trim_all])],
    ok = evm:stop(Vm),
    flush(),
    proplists:is_defined(dist, Options) andalso (ok = evm:destroy(evum_bench_template)),
    {Exe, Args, (T1 - T0) / 1.0e6}.

%% evm:create/1 until it returns (the guest's READY) and until the
%% console's prompt has come too (if it came before create returned, the
%% return counts): `{Vm, OsPid, #{ready, prompt, cpu}}', seconds from the
%% call and the host's CPU time meanwhile. The VM is recorded for bench/run's
%% sweep, and stopped if no prompt comes.
create_to_prompt(Label, Options) ->
    flush(),
    C0 = cpu_busy_s(),
    T0 = now_us(),
    {ok, Vm} = evm:create([{label, Label} | Options]),
    T1 = now_us(),
    T2 = cleanup_on_error(fun() -> ok = wait_prompt(10000), now_us() end, fun() -> evm:stop(Vm) end),
    C1 = cpu_busy_s(),
    #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
    note_pgid(OsPid, Umid),
    {Vm, OsPid, #{ready => (T1 - T0) / 1.0e6, prompt => (T2 - T0) / 1.0e6, cpu => C1 - C0}}.

%% A VM of the benchmark's, recorded for bench/run's sweep.
guest(Label, Options) ->
    {ok, Vm} = evm:create([{label, Label} | Options]),
    #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
    note_pgid(OsPid, Umid),
    Vm.

%% The guest's network interface on a switch, whatever its name (eth0 over
%% the daemon transport, vec0 over bess unless the guest renames it).
guest_if(Vm) ->
    {ok, 0, Out} = evum:cmd(Vm, "ls /sys/class/net"),
    case [I || I <- string:lexemes(binary_to_list(Out), " \n"), I =/= "lo"] of
        [If | _] -> If;
        [] -> error({no_network_interface, Vm})
    end.

%% Waits until something listens on TCP port P in the guest.
wait_listening(_Vm, P, 0) -> error({not_listening, P});
wait_listening(Vm, P, N) ->
    case evum:cmd(Vm, ["netstat -ltn | grep -q ':", P, " '"]) of
        {ok, 0, _} -> ok;
        _ ->
            timer:sleep(50),
            wait_listening(Vm, P, N - 1)
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

%%% Bare UML peers ---------------------------------------------------------------

%% A bare UML peer: `kernel => Path' with the Template's args, a fresh umid,
%% uml_dir and hostfs, fds 3 and 4 (ssl0) on the port's stdin and stdout,
%% stderr with the console. Opts: `cow_over => Base': the ubd0 argument
%% becomes a fresh copy-on-write disk over Base in the peer's uml_dir
%% (removed with it); `prompt => true': the clock also runs until the
%% console's shell prompt (see wait_usable/4). Every kind but `stock' runs
%% with address randomization off, as evum's VMs.
bare_boot(Kind, Template, Tmp, I, #{kernel := Kernel} = Opts) ->
    {Umid, UmlDir, Args0} = fresh_identity(Template, Tmp, io_lib:format("~s~b", [Kind, I])),
    Cow = filename:join(UmlDir, "disk.cow"),
    Args =
        case Opts of
            #{cow_over := Base} -> [fresh_cow(A, Cow, Base) || A <- Args0];
            _ -> Args0
        end,
    %% Pinned to one CPU, as evum pins a VM by default (cpu auto), taken
    %% in turn as evum takes them.
    Cpus = erlang:system_info(logical_processors_available),
    Pin = ["taskset", "-c", integer_to_list(I rem Cpus)],
    Argv =
        case Kind of
            stock -> Pin ++ [Kernel | Args];
            _ -> Pin ++ [?SETARCH, "x86_64", "-R", Kernel | Args]
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

%%% Process groups, PSS, system_monitor ------------------------------------------

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
    case stat_fields(Pid) of
        [State, _PPid, Pgrp | _] -> {binary_to_list(State), binary_to_integer(Pgrp)};
        gone -> gone
    end.

%% The fields of /proc/<Pid>/stat after the command name (field 3 on), Pid a
%% number or "self"; `gone' if there is no such process.
stat_fields(Pid) ->
    case file:read_file(["/proc/", if is_integer(Pid) -> integer_to_list(Pid); true -> Pid end, "/stat"]) of
        {ok, B} ->
            %% The command name is in parentheses and may contain anything.
            {Pos, _} = lists:last(binary:matches(B, <<")">>)),
            binary:split(binary:part(B, Pos + 2, byte_size(B) - Pos - 2), <<" ">>, [global]);
        _ ->
            gone
    end.

%% User plus system CPU time of a process (all its threads), in clock ticks
%% (1/100 s); 0 if it is gone.
cpu_ticks(Pid) ->
    case stat_fields(Pid) of
        %% Fields 14 and 15 of stat (utime, stime) are 12th and 13th after the name.
        gone -> 0;
        Fields -> binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields))
    end.

%% Sum of Pss over every process in the VMs' process groups. UML's two I/O
%% helper processes share the main process's address space (CLONE_VM), and
%% smaps_rollup reports the whole address space for each of them: count
%% every address space once (kcmp(KCMP_VM) tells which processes share one).
%% {Kb, Processes, AddressSpaces, Members}.
pss(OsPids) ->
    Members = [{P, G} || {P, G, State} <- members(OsPids), State =/= "Z"],
    Groups = maps:groups_from_list(fun({_, G}) -> G end, fun({P, _}) -> P end, Members),
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
    Reps = lists:append([one_per_mm(Script, Pids) || Pids <- maps:values(Groups)]),
    Kb = lists:sum([pss_of(P) || P <- Reps]),
    {Kb, length(Members), length(Reps), [P || {P, _} <- Members]}.

%% The processes of one VM, one per address space.
one_per_mm(Script, Pids) ->
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

%% system_monitor long_schedule (reports of Ms or more), collected by a
%% process.
monitor_start(Ms) ->
    Col = spawn(fun() -> collect([]) end),
    erlang:system_monitor(Col, [{long_schedule, Ms}]),
    Col.

monitor_stop(Col) ->
    erlang:system_monitor(undefined),
    timer:sleep(100),
    Col ! {get, self()},
    receive
        {Col, L} -> L
    end.

%% Who a report is about is looked up at once, while the process lives.
collect(Acc) ->
    receive
        {monitor, Who, long_schedule, Info} -> collect([{kind(Who), Info} | Acc]);
        {get, From} -> From ! {self(), lists:reverse(Acc)}
    end.

timeout({_, Info}) -> proplists:get_value(timeout, Info, 0).

long_report(What, Long) ->
    Ge5 = [L || L <- Long, timeout(L) >= 5],
    io:format("long_schedule ~s: ~b >= 1 ms, ~b >= 5 ms, max ~p ms~n",
              [What, length(Long), length(Ge5), lists:max([0 | [timeout(L) || L <- Long]])]),
    Where = lists:foldl(
        fun({Who, Info}, Acc) ->
            K = {Who, proplists:get_value(in, Info), proplists:get_value(out, Info)},
            maps:update_with(K, fun(C) -> C + 1 end, 1, Acc)
        end,
        #{},
        Long
    ),
    Top = lists:sublist(lists:reverse(lists:keysort(2, maps:to_list(Where))), 5),
    [io:format("    ~bx ~p in ~p out ~p~n", [C, Kind, In, Out]) || {{Kind, In, Out}, C} <- Top],
    ok.

%% A port, a process's registered name, or what it was started as
%% (proc_lib's initial call).
kind(P) when is_port(P) -> port;
kind(P) when is_pid(P) ->
    case erlang:process_info(P, [registered_name, dictionary]) of
        [{registered_name, Name} | _] when is_atom(Name) -> Name;
        [_, {dictionary, D}] ->
            case proplists:get_value('$initial_call', D) of
                {M, F, A} -> {M, F, A};
                _ -> pid
            end;
        _ ->
            pid
    end.

%%% Peer processes and switches ----------------------------------------------------

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
    open_to_vms(Tmp, Dir, Ctl),
    io:format("~s: pid ~b, control socket ~s~n", [Kind, maps:get(pgid, P), Ctl]),
    P.

%% A jailed VM runs as a user of its own (see README, Security), which must
%% reach the peer's control socket: the directories on the way are made
%% passable and the socket writable by all. The peer has no uplink, and
%% only this benchmark's guests know where it is.
open_to_vms(Tmp, Dir, Ctl) ->
    ok = file:change_mode(Tmp, 8#711),
    ok = file:change_mode(Dir, 8#755),
    ok = file:change_mode(Ctl, 8#666).

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

%% The switch of evum as it was at a commit (bench/peer-evum builds it):
%% a BEAM of its own, started as a peer switch is, that loads that build of
%% evum, starts a switch and writes its control socket's path into Dir
%% (serve_old_switch/1), and stops with it when its stdin closes.
start_old_evum_switch(Ebin, Tmp, Tag) ->
    start_old_evum_switch(Ebin, Tmp, Tag, any).

%% The same, its switch's thread on Cpu (evum_switch's `cpu' option).
start_old_evum_switch(Ebin, Tmp, Tag, Cpu) ->
    Dir = filename:join(Tmp, "sw-" ++ Tag),
    ok = filelib:ensure_path(Dir),
    Cmd = "exec erl -noshell -pa \"$1\" -pa \"$2\" -run evum_bench_lib serve_old_switch \"$3\" \"$4\"",
    Here = filename:dirname(code:which(?MODULE)),
    P = start_peer(evum_before_lab, Cmd, [Ebin, Here, Dir, cpu_arg(Cpu)], Dir),
    PathFile = filename:join(Dir, "ctl-path"),
    Written = fun() ->
        case file:read_file(PathFile) of
            {ok, Path} when Path =/= <<>> -> {true, binary_to_list(Path)};
            _ -> false
        end
    end,
    Ctl = wait_peer(Written, P, {no_control_socket, PathFile}, 30000),
    P1 = P#{ctl => Ctl},
    wait_socket(P1, 5000),
    io:format("evum_before_lab: evum from ~s, pid ~b, control socket ~s~n", [Ebin, maps:get(pgid, P), Ctl]),
    P1.


%% The peer BEAM's main: a switch on evum's defaults until stdin closes.
cpu_arg(any) -> "any";
cpu_arg(N) when is_integer(N) -> integer_to_list(N).

serve_old_switch([Dir, Cpu]) ->
    note_beam_pid(tmp_base()),
    {ok, _} = application:ensure_all_started(evum),
    {ok, S} = evum_switch:start([{cpu, case Cpu of "any" -> any; N -> list_to_integer(N) end}]),
    ok = file:write_file(filename:join(Dir, "ctl-path"), evum_switch:control_socket(S)),
    _ = io:get_line(""),
    evum_switch:stop(S),
    halt().

with_peer_switch(Kind, Tmp, Tag, Fun) ->
    P = start_peer_switch(Kind, Tmp, Tag),
    try
        Fun(P)
    after
        stop_peer_switch(P)
    end.

%% Waits until the peer listens on Ctl: both peers bind the socket before they
%% listen, so a connect between the two is refused although the file exists.
wait_socket(#{ctl := Ctl} = P, Ms) ->
    wait_peer(fun() -> listening(Ctl) end, P, {no_control_socket, Ctl}, Ms).

%% Waits up to Ms for Ready() to be true (or {true, Value}: Value is
%% returned), as long as the peer runs.
wait_peer(Ready, #{port := Port, kind := Kind} = P, {Why, What}, Ms) ->
    case Ready() of
        true -> ok;
        {true, Value} -> Value;
        false when Ms =< 0 -> error({Why, Kind, What});
        false ->
            receive
                {Port, {exit_status, St}} -> error({peer_switch_exited, Kind, St})
            after 20 -> wait_peer(Ready, P, {Why, What}, Ms - 20)
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

%%% Bookkeeping for bench/run's last-resort clean-up -------------------------------

tmp_base() ->
    case os:getenv("EVUM_BENCH_TMP") of
        Dir when is_list(Dir), Dir =/= "" -> Dir;
        _ -> error("EVUM_BENCH_TMP is not set: run the benchmarks with sh bench/run")
    end.

note_beam_pid(Tmp) ->
    ok = file:write_file(filename:join(Tmp, "beam-pids"), [os:getpid(), "\n"], [append]).

note_pgid(Pgid, Umid) ->
    ok = file:write_file(filename:join(tmp_base(), "pgids"), [integer_to_list(Pgid), " ", Umid, "\n"], [append]).

%% UML processes that are not ours (other users' VMs) disturb the figures,
%% as does any other load on the host: its load average is printed too.
warn_foreign(When) ->
    {ok, Load} = file:read_file("/proc/loadavg"),
    io:format("host load average (~s): ~s~n", [When, lists:join(" ", lists:sublist(string:lexemes(Load, " "), 3))]),
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
