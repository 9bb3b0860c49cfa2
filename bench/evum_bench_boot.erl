%% @doc The boot benchmark: evm:create/1 to the console's shell prompt on
%% the benchmarks' kernel, against a bare boot of the same kernel with
%% evum's own command line, and the same two on Debian's UML 6.1 where it
%% runs on this host. See bench/README.md.
-module(evum_bench_boot).

-export([run/1]).

-import(evum_bench_lib, [
    env_int/2, header/1, evum_template/0, debian_kernel/0, bare_boot/5, rounds/3, median/1, stat_line/2,
    cpu_stat_line/2, ratio/4, ratio/5, figure/5, figure/6, create_to_prompt/2, now_us/0, live_members/1,
    wait_gone/2, flush/0
]).

%% Readiness: the guest's `\x01EVUM READY' line on serial line ssl0 (fds 3
%% and 4 of the UML process), then the console's shell prompt. evm:create/1
%% returns when evum has read READY and the prompt is evum's console message
%% ending in "# "; for the bare peers a shell wrapper points fds 3 and 4 at
%% the port's pipes and the times are taken when the marker and the prompt
%% show up there.
run(Tmp) ->
    Runs = env_int("EVUM_BENCH_BOOTS", 20),
    header(io_lib:format("boot: ~b sequential boots each to the shell prompt, interleaved", [Runs])),
    {ok, _} = application:ensure_all_started(evum),
    %% A warm-up evum VM: loads the NIF, builds or finds the image, and gives
    %% us evum's exact command line to reuse for the bare peers.
    {Kernel, Template, WarmUp} = evum_template(),
    io:format("evum's command line (from /proc/<os_pid>/cmdline of a VM it started):~n  ~s~n",
              [lists:join(" ", [Kernel | Template])]),
    io:format("bare   = taskset -c <one CPU, in turn> setarch x86_64 -R ~s <the same args, fresh umid/uml_dir/hostfs>~n", [Kernel]),
    Debian =
        case debian_kernel() of
            {ok, DebianKernel} ->
                io:format("debian = evm:create/1 with {kernel, ~s}~n"
                          "stock  = ~s <the same args without initcall_blacklist= and lpj=>, ASLR on~n",
                          [DebianKernel, DebianKernel]),
                [{debian, DebianKernel}];
            {skip, _} ->
                []
        end,
    io:format("readiness = the guest's \"\\x01EVUM READY\" line on ssl0, then the console's prompt (\"# \")~n"),
    StockArgs = [A || A <- Template, not is_fast_arg(A)],
    Boot = fun
        (evum, I) -> evum_boot(evum, I, []);
        (bare, I) -> bare_boot(bare, Template, Tmp, I, #{kernel => Kernel, prompt => true});
        (debian, I) -> evum_boot(debian, I, [{kernel, proplists:get_value(debian, Debian)}]);
        (stock, I) -> bare_boot(stock, StockArgs, Tmp, I, #{kernel => proplists:get_value(debian, Debian),
                                                            prompt => true})
    end,
    Kinds = [evum, bare | [K || {debian, _} <- Debian, K <- [debian, stock]]],
    %% One unmeasured boot of each other kind too (page cache, first exec).
    [_ = Boot(K, 0) || K <- tl(Kinds)],
    io:format("warm-up done (evum first boot, incl. application start: ~.3f s)~n", [WarmUp]),
    Results = rounds(Kinds, Runs, Boot),
    Of = fun(Kind, Key) -> [maps:get(Key, R) || R <- maps:get(Kind, Results)] end,
    Evum = maps:get(evum, Results),
    io:format("~n"),
    stat_line("evum: evm:create/1 returns (guest READY)", Of(evum, ready)),
    stat_line("evum: create to the shell prompt", Of(evum, prompt)),
    stat_line("evum: prompt + first evum:cmd(\"true\") ok", [P + C || #{prompt := P, cmd := C} <- Evum]),
    stat_line("evum: the evum:cmd(\"true\") alone", Of(evum, cmd)),
    stat_line("evum: evm:stop/1 (until nothing left)", Of(evum, stop)),
    case [L || #{left := L} <- Evum, L =/= []] of
        [] -> ok;
        Lefts -> io:format("NOTE: ~b of ~b evm:stop/1 calls returned with processes of the VM still alive: ~p~n",
                           [length(Lefts), length(Evum), Lefts])
    end,
    stat_line("bare: spawn to READY", Of(bare, ready)),
    stat_line("bare: spawn to the shell prompt", Of(bare, prompt)),
    cpu_stat_line("evum: host CPU busy until the prompt", Of(evum, cpu)),
    cpu_stat_line("bare: host CPU busy until the prompt", Of(bare, cpu)),
    [begin
         stat_line("debian: create returns (READY), 6.1", Of(debian, ready)),
         stat_line("debian: create to the shell prompt, 6.1", Of(debian, prompt)),
         stat_line("stock: spawn to the shell prompt, 6.1", Of(stock, prompt)),
         cpu_stat_line("debian: host CPU busy until the prompt", Of(debian, cpu))
     end
     || _ <- Debian],
    %% Rounds are interleaved, so a ratio within each round is less
    %% disturbed by slow periods of a busy host than a ratio of medians.
    Paired = fun(Key, Peer) ->
        median([maps:get(Key, E) / maps:get(Key, P) || {E, P} <- lists:zip(Evum, maps:get(Peer, Results))])
    end,
    io:format("evum/bare within each round: READY median ~.3f, prompt median ~.3f~n",
              [Paired(ready, bare), Paired(prompt, bare)]),
    EM = median(Of(evum, prompt)),
    io:format("~n"),
    figure("boot evum median, evm:create to the shell prompt", EM, "s", '=<', 0.05),
    ratio("boot evum/bare (median, to the shell prompt)", EM / median(Of(bare, prompt)), '=<', 1.05),
    ratio("boot evum/bare (median, to READY)", median(Of(evum, ready)) / median(Of(bare, ready)), '=<', 1.05),
    case Debian of
        [{debian, Deb}] ->
            DM = median(Of(debian, prompt)),
            figure("boot evum on Debian's 6.1 median, evm:create to the shell prompt", DM, "s", '=<', 0.35, [Deb]),
            ratio("boot evum to the prompt, evum's kernel/Debian's 6.1 (medians)", EM / DM, '=<', 1.0,
                  [Kernel, Deb]),
            ratio("boot evum to the prompt/bare-stock 6.1 (medians)", EM / median(Of(stock, prompt)), '=<', 0.3,
                  [Kernel, Deb]);
        [] ->
            ok
    end,
    ok.

is_fast_arg("initcall_blacklist=" ++ _) -> true;
is_fast_arg("lpj=" ++ _) -> true;
is_fast_arg(_) -> false.

%% One evum VM to its shell prompt, then one evum:cmd/2 and evm:stop/1.
evum_boot(Kind, I, Options) ->
    Label = list_to_atom(lists:concat(["evum_bench_boot_", Kind, "_", I])),
    {Vm, OsPid, Times} = create_to_prompt(Label, Options),
    T1 = now_us(),
    {ok, 0, <<>>} = evum:cmd(Vm, "true"),
    T2 = now_us(),
    ok = evm:stop(Vm),
    T3 = now_us(),
    %% evm:stop/1 promises nothing of the VM is left when it returns.
    LeftAtReturn = live_members([OsPid]),
    [] = wait_gone([OsPid], 5000),
    flush(),
    Times#{cmd => (T2 - T1) / 1.0e6, stop => (T3 - T2) / 1.0e6, left => LeftAtReturn}.
