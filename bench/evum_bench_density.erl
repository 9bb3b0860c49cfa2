%% @doc The density benchmark: N VMs created at once, all at a prompt: the
%% wall time, PSS per idle VM, host processes per VM, and what each VM
%% costs the BEAM (fds, Erlang processes, threads). fleet/2 is the whole
%% run, also for evum_bench_density1000. See bench/README.md.
-module(evum_bench_density).

-export([run/1, fleet/2]).

-import(evum_bench_lib, [
    env_int/2, header/1, evum_template/0, now_us/0, cpu_busy_s/0, host_forks/0, pmap/2, pss/1, members/1, cpu_ticks/1,
    monitor_start/1, monitor_stop/1, long_report/2, timeout/1, live_members/1, wait_gone/2, evum_base/0,
    note_pgid/2, median0/1, max0/1, figure/5, ratio/4, wait_prompt/1
]).

run(_Tmp) ->
    N = env_int("EVUM_BENCH_VMS", 100),
    Idle = env_int("EVUM_BENCH_IDLE_MS", 3000),
    Cores = erlang:system_info(logical_processors_available),
    header(io_lib:format("density: ~b VMs created concurrently through evm:create/1 on ~p cores", [N, Cores])),
    {ok, _} = application:ensure_all_started(evum),
    %% Warm up (NIF loaded, image cached) so the measurement is of boots only.
    {_, _, _} = evum_template(),
    R = fleet(N, #{idle => Idle}),
    #{vms := Vms, wall := Wall, pss_per_vm := PerVm, procs_per_vm := Procs, long_create := Long} = R,
    io:format("~n"),
    figure(io_lib:format("density wall time, ~b VMs to the prompt", [N]), Wall, "s", '=<', 1.5 * N / 100),
    figure("density PSS per idle VM", PerVm, "MB", '=<', 10.0),
    io:format("density: ~.1f host processes per idle VM~n", [Procs]),
    figure("long_schedule reports >= 1 ms during creates", length(Long), "", '=<', 0),
    figure("long_schedule reports >= 5 ms during creates", length([L || L <- Long, timeout(L) >= 5]), "", '=<', 0),
    VPCS = Vms / Wall / Cores,
    io:format("density: ~.2f VMs/core/s (~b VMs / ~.2f s / ~b cores)~n", [VPCS, Vms, Wall, Cores]),
    ratio("density evum/Firecracker VMs per core per second (5)", VPCS / 5, '>=', 1.0),
    ok = fleet_ok(R).

%% Fails unless every VM was created, answered, stopped and left nothing.
fleet_ok(#{failed := [], not_ok := [], left := [], left_dirs := []}) -> ok;
fleet_ok(_) -> error(density_failures).

%% N processes are spawned at once, each calling evm:create/1 (with a long
%% timeout, so a slow host does not turn into failures) and staying alive as
%% the VM's owner; the wall time runs from the first spawn until the last
%% VM is at its shell prompt. Then every VM must answer evum:cmd/2, and after
%% `idle' ms the PSS is summed over every process of every VM's process group.
%% Then all are stopped at once, and nothing of them may be left. Also what
%% each VM costs: host processes, file handles, and the BEAM's fds, Erlang
%% processes and OS threads. Opts: `idle' (ms), `timeout' (ms, per create).
%% Returns the figures as a map; see fleet_ok/1 for the verdict.
fleet(N, Opts) ->
    Idle = maps:get(idle, Opts, 3000),
    Timeout = maps:get(timeout, Opts, 300000),
    Cores = erlang:system_info(logical_processors_available),
    Parent = self(),
    Before = costs(),
    Col = monitor_start(1),
    Forks0 = host_forks(),
    Cpu0 = cpu_busy_s(),
    T0 = now_us(),
    Owners = [spawn(fun() -> owner(Parent, I, Timeout) end) || I <- lists:seq(1, N)],
    try
        Created = [
            receive
                {created, O, Res} -> {O, Res}
            after Timeout + 300000 -> error({density_timeout, O})
            end
         || O <- Owners
        ],
        T1 = now_us(),
        Cpu1 = cpu_busy_s(),
        Forks1 = host_forks(),
        Long = monitor_stop(Col),
        Failed = [{O, E} || {O, {error, E}} <- Created],
        Vms = [{O, Vm, OsPid, Umid, Dt} || {O, {ok, Vm, OsPid, Umid, Dt}} <- Created],
        NVms = max(1, length(Vms)),
        OsPids = [P || {_, _, P, _, _} <- Vms],
        Wall = (T1 - T0) / 1.0e6,
        Each = [Dt || {_, _, _, _, Dt} <- Vms],
        io:format("created ~b of ~b, all at the prompt, in ~.2f s (each: median ~.2f s, max ~.2f s); "
                  "failures: ~p~n", [length(Vms), N, Wall, median0(Each), max0(Each), Failed]),
        io:format("host CPU busy during the creates: ~.1f s of ~.1f s available (~.2f CPU-s per VM); "
                  "host processes created: ~b (~b per VM)~n",
                  [Cpu1 - Cpu0, Wall * Cores, (Cpu1 - Cpu0) / max(1, N), Forks1 - Forks0,
                   (Forks1 - Forks0) div max(1, N)]),
        Col2 = monitor_start(1),
        %% Every guest answers a command (its shell and command loop are up).
        T2 = now_us(),
        Answers = pmap(fun({_, Vm, _, _, _}) -> evum:cmd(Vm, "true", 120000) end, Vms),
        T3 = now_us(),
        NotOk = [A || A <- Answers, A =/= {ok, 0, <<>>}],
        io:format("all ~b answered evum:cmd(\"true\") in ~.2f s (failures: ~p)~n",
                  [length(Vms), (T3 - T2) / 1.0e6, lists:sublist(NotOk, 5)]),
        IdleCpu0 = cpu_busy_s(),
        VmCpu0 = vm_cpu_s(OsPids),
        timer:sleep(Idle),
        IdleCpu = (cpu_busy_s() - IdleCpu0) / (Idle / 1000),
        VmCpu = (vm_cpu_s(OsPids) - VmCpu0) / (Idle / 1000),
        io:format("while the ~b VMs idle: their own processes use ~.2f of ~b cores (~.2f ms per VM per s); "
                  "the whole host (other users too) ~.2f~n", [length(Vms), VmCpu, Cores, 1000 * VmCpu / NVms, IdleCpu]),
        {PssKb, Procs, Spaces, Pids} = pss(OsPids),
        PerVm = PssKb / 1024 / NVms,
        io:format("after ~b ms idle: ~b host processes (~.1f per VM) in ~b address spaces, total PSS ~.1f MB "
                  "(~.2f MB per VM)~n", [Idle, Procs, Procs / NVms, Spaces, PssKb / 1024, PerVm]),
        After = costs(),
        PerVmCost = maps:map(fun(K, V) -> (V - maps:get(K, Before)) / NVms end, After),
        MaxMaps = lists:max([0 | [map_count(P) || P <- Pids]]),
        io:format("per VM: ~.1f BEAM fds, ~.1f Erlang processes, ~.1f Erlang ports, ~.2f BEAM OS threads, "
                  "~.1f host file handles (fs.file-nr); most memory maps of one VM process: ~b~n",
                  [maps:get(fds, PerVmCost), maps:get(erl_procs, PerVmCost), maps:get(erl_ports, PerVmCost),
                   maps:get(threads, PerVmCost), maps:get(file_handles, PerVmCost), MaxMaps]),
        LongRun = monitor_stop(Col2),
        %% Stop all of them at once; check nothing is left.
        Col3 = monitor_start(1),
        T4 = now_us(),
        [O ! stop || {O, _, _, _, _} <- Vms],
        Stopped = [
            receive
                {stopped, O, R} -> R
            after 300000 -> {error, {stop_timeout, O}}
            end
         || {O, _, _, _, _} <- Vms
        ],
        T5 = now_us(),
        LeftAtReturn = live_members(OsPids),
        LongStop = monitor_stop(Col3),
        Left = wait_gone(OsPids, 10000),
        LeftDirs = [U || {_, _, _, U, _} <- Vms, filelib:is_dir(filename:join(evum_base(), U))],
        io:format("stopped ~b in ~.2f s; stop results not ok: ~p; processes alive when the last evm:stop/1 "
                  "returned: ~b; left after waiting up to 10 s (not zombies): ~p; runtime dirs left: ~p~n",
                  [length(Vms), (T5 - T4) / 1.0e6, [S || S <- Stopped, S =/= ok], length(LeftAtReturn), Left,
                   LeftDirs]),
        io:format("~n"),
        long_report("during the concurrent creates", Long),
        long_report("while the VMs run (answers, idle, PSS)", LongRun),
        long_report("during the concurrent stops", LongStop),
        #{n => N, vms => length(Vms), wall => Wall, failed => Failed, not_ok => NotOk, left => Left,
          left_dirs => LeftDirs, pss_per_vm => PerVm, procs_per_vm => Procs / NVms, per_vm => PerVmCost,
          max_maps => MaxMaps, idle_cpu_per_vm => VmCpu / NVms, long_create => Long, long_run => LongRun, long_stop => LongStop,
          stop_wall => (T5 - T4) / 1.0e6}
    after
        [exit(O, kill) || O <- Owners],
        erlang:system_monitor(undefined)
    end.

%% What the VMs cost this node and the host, counted before and after.
costs() ->
    {ok, Fds} = file:list_dir("/proc/self/fd"),
    {ok, Status} = file:read_file("/proc/self/status"),
    {match, [Threads]} = re:run(Status, "^Threads:\\s+(\\d+)", [multiline, {capture, all_but_first, list}]),
    {ok, FileNr} = file:read_file("/proc/sys/fs/file-nr"),
    [Handles | _] = string:lexemes(binary_to_list(FileNr), " \t\n"),
    #{fds => length(Fds), threads => list_to_integer(Threads), erl_procs => erlang:system_info(process_count),
      erl_ports => erlang:system_info(port_count), file_handles => list_to_integer(Handles)}.

%% CPU seconds (user and system) the live processes of these process groups
%% have used.
vm_cpu_s(Pgids) ->
    lists:sum([cpu_ticks(P) || {P, _, State} <- members(Pgids), State =/= "Z"]) / 100.

map_count(Pid) ->
    case file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/maps") of
        {ok, B} -> length(binary:matches(B, <<"\n">>));
        _ -> 0
    end.

owner(Parent, I, Timeout) ->
    Label = list_to_atom("evum_bench_density_" ++ integer_to_list(I)),
    T0 = now_us(),
    %% Past evm:create/1's memory admission (every VM's whole mem against
    %% the host's): density is what the VMs really take, and density1000
    %% checks MemAvailable against their measured PSS instead.
    case catch evm:create([{label, Label}, {timeout, Timeout}, {overcommit, true}]) of
        {ok, Vm} ->
            #{os_pid := OsPid, umid := Umid} = evum:info(Vm),
            note_pgid(OsPid, Umid),
            %% At the prompt: the console's shell is up too.
            Prompt = catch wait_prompt(Timeout),
            T1 = now_us(),
            case Prompt of
                ok ->
                    Parent ! {created, self(), {ok, Vm, OsPid, Umid, (T1 - T0) / 1.0e6}},
                    owner_loop(Parent, Vm);
                _ ->
                    evm:stop(Vm),
                    Parent ! {created, self(), {error, {no_prompt, Label}}}
            end;
        Error ->
            Parent ! {created, self(), {error, Error}}
    end.

owner_loop(Parent, Vm) ->
    receive
        stop ->
            R = evm:stop(Vm),
            Parent ! {stopped, self(), R};
        _Console ->
            owner_loop(Parent, Vm)
    end.
