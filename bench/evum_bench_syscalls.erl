%% @doc The syscalls benchmark: the cost of a guest system call and the
%% guest's fork+exec rate on the benchmarks' kernel, in UML's ptrace mode
%% (the default) against its seccomp mode (`seccomp=on'), timed inside the
%% guest. See bench/README.md.
-module(evum_bench_syscalls).

-export([run/1]).

-import(evum_bench_lib, [env_int/2, header/1, guest/2, guest_kernel/1, members/1, rounds/3, ratio/4, flush/0]).

%% Each measurement is one evum:cmd/2: the guest's clock (busybox adjtimex,
%% microseconds) is read before and after a baseline and before and after
%% the work, and the baseline's time (the reads' own fork and exec, an empty
%% dd or loop) is taken off: dd with bs=1 makes two system calls (a read of
%% /dev/zero, a write to /dev/null) per byte, so the time per system call is
%% (T(N bytes) - T(0 bytes)) / 2N; the fork+exec rate is M / (T(M runs of
%% /bin/true) - T(none)). The console and the command channel are not in
%% the time. Best of EVUM_BENCH_SYSCALL_RUNS, the modes alternating.
run(_Tmp) ->
    Runs = env_int("EVUM_BENCH_SYSCALL_RUNS", 5),
    Bytes = env_int("EVUM_BENCH_SYSCALL_BYTES", 100000),
    Forks = env_int("EVUM_BENCH_SYSCALL_FORKS", 200),
    header(io_lib:format("syscalls: dd bs=1 count=~b and ~b fork+exec of /bin/true in a guest, ptrace mode "
                         "against seccomp mode, best of ~b runs each", [Bytes, Forks, Runs])),
    {ok, _} = application:ensure_all_started(evum),
    Ptrace = guest(evum_bench_sys_ptrace, []),
    try
        Seccomp = seccomp_guest(evum_bench_sys_seccomp),
        try
            measure(#{ptrace => Ptrace, seccomp => Seccomp}, Runs, Bytes, Forks)
        after
            catch evm:stop(Seccomp)
        end
    after
        catch evm:stop(Ptrace),
        flush()
    end.

%% A guest in UML's seccomp mode: evm:create/1's {seccomp, true} where evum
%% has it, else the kernel's own `seccomp=on' through {append, ...}.
seccomp_guest(Label) ->
    case evm:create([{label, Label}, {seccomp, true}]) of
        {ok, Vm} ->
            io:format("seccomp mode: evm:create/1 with {seccomp, true}~n"),
            #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
            evum_bench_lib:note_pgid(OsPid, Umid),
            Vm;
        {error, {bad_option, _}} ->
            io:format("seccomp mode: evm:create/1 with {append, \"seccomp=on\"} (evum has no {seccomp, true} yet)~n"),
            guest(Label, [{append, "seccomp=on"}])
    end.

measure(Vms, Runs, Bytes, Forks) ->
    %% Which mode each guest really runs in: UML's userspace processes carry
    %% a seccomp filter (Seccomp: 2 in /proc/<pid>/status) in seccomp mode
    %% only.
    maps:foreach(
        fun(Mode, Vm) ->
            guest_kernel(Vm),
            Seen = mode(Vm),
            io:format("  ~s guest: ~s mode (from /proc/<pid>/status of its host processes)~n", [Mode, Seen]),
            Seen =:= Mode orelse error({wrong_mode, Mode, Seen})
        end,
        Vms
    ),
    Run = fun(Mode, I) ->
        Vm = maps:get(Mode, Vms),
        Ns = syscall_ns(Vm, Bytes),
        Rate = fork_rate(Vm, Forks),
        I > 0 andalso io:format("  run ~b ~-7s ~7b ns per system call, ~6.1f fork+exec per s~n", [I, Mode, round(Ns), Rate]),
        {Ns, Rate}
    end,
    %% Unmeasured: the page cache of dd and true, the guests' first forks.
    [Run(Mode, 0) || Mode <- [ptrace, seccomp]],
    Results = rounds([ptrace, seccomp], Runs, Run),
    Best = fun(Mode) ->
        L = maps:get(Mode, Results),
        {lists:min([N || {N, _} <- L]), lists:max([R || {_, R} <- L])}
    end,
    {PNs, PRate} = Best(ptrace),
    {SNs, SRate} = Best(seccomp),
    io:format("~nbest of ~b: ptrace ~b ns per system call, ~.1f fork+exec per s; seccomp ~b ns per system call, "
              "~.1f fork+exec per s~n", [Runs, round(PNs), PRate, round(SNs), SRate]),
    io:format("~n"),
    ratio("syscalls time per system call ptrace/seccomp (seccomp's speed-up)", PNs / SNs, '>=', 1.7),
    io:format("RATIO syscalls fork+exec per s seccomp/ptrace = ~.3f (no target) ~s~n",
              [SRate / PRate, evum_bench_lib:on_tag([evum_bench_lib:kernel()])]),
    ok.

mode(Vm) ->
    #{os_pid := OsPid} = evum:info(Vm),
    Filtered = [P || {P, _, State} <- members([OsPid]), State =/= "Z", seccomp_field(P) =:= "2"],
    case Filtered of
        [] -> ptrace;
        _ -> seccomp
    end.

seccomp_field(Pid) ->
    case file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/status") of
        {ok, B} ->
            case re:run(B, "^Seccomp:\\s*(\\d)", [multiline, {capture, all_but_first, list}]) of
                {match, [V]} -> V;
                nomatch -> "?"
            end;
        _ ->
            "?"
    end.

%% Nanoseconds per system call: (T(N bytes) - T(0 bytes)) / 2N.
syscall_ns(Vm, Bytes) ->
    Dd = fun(N) -> ["dd if=/dev/zero of=/dev/null bs=1 count=", integer_to_list(N), " 2>/dev/null"] end,
    {T0, TN} = timed(Vm, Dd(0), Dd(Bytes)),
    (TN - T0) * 1000 / (2 * Bytes).

%% fork+exec of /bin/true per second: M / (T(M runs) - T(none)).
fork_rate(Vm, M) ->
    Loop = fun(K) -> ["i=0; while [ $i -lt ", integer_to_list(K), " ]; do /bin/true; i=$((i + 1)); done"] end,
    {T0, TM} = timed(Vm, Loop(0), Loop(M)),
    M / ((TM - T0) / 1.0e6).

%% Microseconds the guest's clock says the baseline and the work took.
timed(Vm, Baseline, Work) ->
    {ok, 0, Out} = evum:cmd(Vm, ["adjtimex; ", Baseline, "; adjtimex; ", Work, "; adjtimex"], 300000),
    Secs = [list_to_integer(S) || [S] <- matches(Out, "time\\.tv_sec:\\s+(\\d+)")],
    Usecs = [list_to_integer(U) || [U] <- matches(Out, "time\\.tv_usec:\\s+(\\d+)")],
    case [S * 1000000 + U || {S, U} <- lists:zip(Secs, Usecs)] of
        [A, B, C] -> {B - A, C - B};
        _ -> error({no_guest_times, Out})
    end.

matches(Out, Re) ->
    case re:run(Out, Re, [global, {capture, all_but_first, list}]) of
        {match, L} -> L;
        nomatch -> []
    end.
