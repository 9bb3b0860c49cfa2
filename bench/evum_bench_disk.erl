%% @doc The disk benchmark: boot to the console prompt from a cached ext4
%% image with a fresh copy-on-write disk, evm:create/1 against a bare UML
%% of the same kernel with evum's own command line. See bench/README.md.
-module(evum_bench_disk).

-export([run/1]).

-import(evum_bench_lib, [
    kernel/0,
    env_int/2, header/1, now_us/0, evum_template/1, bare_boot/5, rounds/3, stat_line/2, cpu_stat_line/2, median/1,
    ratio/4, figure/5, create_to_prompt/2, cleanup_on_error/2, wait_gone/2, flush/0
]).

%% The disk benchmark's image (an [image.NAME] of its configuration file).
-define(DISK_DIST, evum_bench_disk).

%% Boot to the console prompt from a cached ext4 image (built from the host's
%% busybox) with a fresh copy-on-write disk each time: evm:create/1 with a
%% fresh label versus a bare `linux' with evum's own command line and a
%% fresh COW over the same image. The image, the cache and the labels' disks
%% are all in $EVUM_BENCH_TMP.
run(Tmp) ->
    Runs = env_int("EVUM_BENCH_DISK_BOOTS", 10),
    header(io_lib:format("disk: ~b boots each from an ext4 image with a fresh copy-on-write disk, interleaved",
                         [Runs])),
    Dir = filename:join(Tmp, "disk"),
    disk_setup(Dir),
    {ok, _} = application:ensure_all_started(evum),
    T0 = now_us(),
    {ok, Base} = evm:fetch(?DISK_DIST),
    io:format("image ~s built with mke2fs in ~.3f s (from_dir, 64M)~n", [Base, (now_us() - T0) / 1.0e6]),
    {Kernel, Template, WarmUp} = evum_template([{dist, ?DISK_DIST}]),
    io:format("evum's command line (from /proc/<os_pid>/cmdline of a VM it started):~n  ~s~n",
              [lists:join(" ", [Kernel | Template])]),
    io:format("bare = setarch x86_64 -R ~s <the same args, fresh umid/uml_dir/hostfs, "
              "ubd0=<fresh COW>,~s>~n", [Kernel, Base]),
    io:format("READY = the guest's \"\\x01EVUM READY\" line on ssl0; prompt = a console message ending in \"# \" "
              "(usable = both seen)~n"),
    Boot = fun
        (evum, I) -> disk_evum_boot(I);
        (bare, I) -> bare_boot(disk, Template, Tmp, I, #{kernel => Kernel, cow_over => binary_to_list(Base),
                                                          prompt => true})
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
    %% (evum_bench_lib:setup/0 has loaded evum already.)
    case application:load(evum) of
        ok -> ok;
        {error, {already_loaded, evum}} -> ok
    end,
    ok = application:set_env(evum, config, Config),
    %% evum's kernel lives in the cache: keep the one the benchmarks use
    %% rather than build another in this benchmark's own cache.
    ok = application:set_env(evum, kernel, kernel()),
    ok = application:set_env(evum, cache_dir, filename:join(Dir, "cache")),
    ok = application:set_env(evum, state_dir, filename:join(Dir, "state")).

%% One evum boot with a fresh label, so a fresh copy-on-write disk: create
%% until it returns (READY), and until the console's prompt has arrived too
%% (if it came before create returned, that is when it counts); then stop
%% and destroy the label's disk.
disk_evum_boot(I) ->
    Label = list_to_atom("evum_bench_disk_" ++ integer_to_list(I)),
    {Vm, OsPid, Times} = cleanup_on_error(fun() -> create_to_prompt(Label, [{dist, ?DISK_DIST}]) end,
                                          fun() -> evm:destroy(Label) end),
    T2 = now_us(),
    Cow = filename:join([evum_disk:dir(), "disks", atom_to_list(Label), atom_to_list(?DISK_DIST) ++ ".cow"]),
    IsCow = filelib:is_regular(Cow),
    ok = evm:stop(Vm),
    ok = evm:destroy(Label),
    T3 = now_us(),
    [] = wait_gone([OsPid], 5000),
    false = filelib:is_file(Cow),
    flush(),
    Times#{stop => (T3 - T2) / 1.0e6, cow => IsCow}.
