%% The guest kernel itself, booted for real: it keeps a guest's vector
%% registers through thread switches, other processes and signal handlers
%% (Debian's UML 6.1 loses AVX-512 state in signal frames), it loads no
%% modules, and Debian's packaged kernel still boots where the host runs it.
%%
%% The tests use the default kernel (the `kernel' application setting);
%% EVUM_TEST_KERNEL=/path/to/linux runs them with another.
-module(evum_kernel_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").

%% The cases are named in the fixture and called through ?MODULE.
-compile([export_all, nowarn_export_all]).

-define(BOOT, 60000).
-define(DEBIAN_KERNEL, "/usr/bin/linux").
%% Where the guest mounts the test's host directory.
-define(MNT, "/mnt/evum-test").

%%% Fixture: the application, with EVUM_TEST_KERNEL as its kernel if set.

evum_kernel_test_() ->
    {setup, fun setup/0, fun cleanup/1, [
        {timeout, 180, {T, fun() -> ?MODULE:F() end}}
     || {T, F} <- [
            {"a guest's vector registers survive threads, processes and signals", vector_registers},
            {"a guest cannot load kernel modules", no_modules},
            {"Debian's packaged kernel boots where this host runs it", debian_kernel},
            {"evum's kernel is found in the cache, with this host's delay loop", cached_kernel},
            {"a build from the BEAM that cannot fetch its source says why and leaves nothing", unreachable_source}
        ]
    ]}.

setup() ->
    {ok, _} = application:ensure_all_started(evum),
    Previous = application:get_env(evum, kernel),
    case os:getenv("EVUM_TEST_KERNEL") of
        Kernel when Kernel =:= false; Kernel =:= "" -> ok;
        Kernel -> application:set_env(evum, kernel, Kernel)
    end,
    Previous.

cleanup({ok, Kernel}) ->
    application:set_env(evum, kernel, Kernel);
cleanup(undefined) ->
    application:unset_env(evum, kernel).

%%% Helpers

%% A directory of its own for the test, readable by others (when the BEAM
%% is root, some VMs run as an unprivileged user), removed afterwards.
with_dir(Fun) ->
    Name = io_lib:format("evum-kernel-tests-~s-~b", [os:getpid(), erlang:unique_integer([positive])]),
    Dir = filename:join("/tmp", lists:flatten(Name)),
    ok = file:make_dir(Dir),
    try
        ok = file:change_mode(Dir, 8#755),
        Fun(Dir)
    after
        ok = file:del_dir_r(Dir)
    end.

%% A guest of the default kernel with Dir mounted read-only at ?MNT over
%% hostfs; stopped afterwards.
with_guest(Dir, Fun) ->
    {ok, Vm} = evm:create([{timeout, ?BOOT}, {hostfs, Dir}]),
    try
        Mount = "mkdir -p " ?MNT " && mount -t hostfs -o ro,/ none " ?MNT,
        ?assertMatch({ok, 0, _}, evum:cmd(Vm, Mount)),
        Fun(Vm)
    after
        ok = evm:stop(Vm),
        evum_tests:flush()
    end.

%% A host program's exit status and output.
run(Program, Args) ->
    Port = open_port(
        {spawn_executable, os:find_executable(Program)},
        [{args, Args}, binary, exit_status, stderr_to_stdout]
    ),
    collect(Port, <<>>).

collect(Port, Acc) ->
    receive
        {Port, {data, Data}} -> collect(Port, <<Acc/binary, Data/binary>>);
        {Port, {exit_status, Status}} -> {Status, Acc}
    after 60000 -> error({stuck, Acc})
    end.

%% test/guest/vecregs.c, wherever rebar3 compiled this module from.
vecregs_source() ->
    Candidates = [
        filename:join([filename:dirname(?FILE), "guest", "vecregs.c"]),
        filename:join([filename:dirname(code:which(?MODULE)), "guest", "vecregs.c"]),
        filename:absname("test/guest/vecregs.c")
    ],
    case [F || F <- Candidates, filelib:is_regular(F)] of
        [Source | _] -> Source;
        [] -> error({no_vecregs_source, Candidates})
    end.

%% The widest vector registers the host has, which the guest must keep.
host_vector_set() ->
    {ok, CpuInfo} = file:read_file("/proc/cpuinfo"),
    {match, [Flags]} = re:run(CpuInfo, "^flags\\s*:(.*)$", [multiline, {capture, all_but_first, binary}]),
    Has = fun(Flag) -> lists:member(Flag, binary:split(Flags, <<" ">>, [global, trim_all])) end,
    case {Has(<<"avx512f">>), Has(<<"avx">>)} of
        {true, _} ->
            {"avx512", "zmm0-31, so zmm16-31 and ymm16-31 too"};
        {false, true} ->
            {"avx", "ymm0-15; this host has no AVX-512, so zmm0-31 and ymm16-31 are not checked"};
        {false, false} ->
            {"sse", "xmm0-15; this host has neither AVX-512 nor AVX"}
    end.

%%% Tests

%% vecregs loads known values into the registers and checks them while a
%% second thread, a forked process and a 1 ms SIGALRM handler all load
%% values of their own into the same registers.
vector_registers() ->
    {Set, Registers} = host_vector_set(),
    ?debugFmt("checking ~s registers in the guest: ~s", [Set, Registers]),
    with_dir(fun(Dir) ->
        Program = filename:join(Dir, "vecregs"),
        ?assertMatch({0, _}, run("gcc", ["-static", "-O2", "-pthread", "-o", Program, vecregs_source()])),
        ok = file:change_mode(Program, 8#755),
        with_guest(Dir, fun(Vm) ->
            {ok, 0, Release} = evum:cmd(Vm, "uname -r"),
            {ok, Status, Output} = evum:cmd(Vm, ?MNT "/vecregs " ++ Set, 60000),
            ?debugFmt("guest kernel ~ts: ~ts", [string:trim(Release), Output]),
            Summary = "^vecregs: " ++ Set ++ " checks=(\\d+) mismatches=(\\d+) signals=(\\d+)",
            Found = re:run(Output, Summary, [multiline, {capture, all_but_first, list}]),
            ?assertMatch({match, _}, Found, Output),
            {match, [Checks, Mismatches, Signals]} = Found,
            ?assertEqual("0", Mismatches, Output),
            ?assert(list_to_integer(Checks) > 0),
            %% Enough signals landed while the registers were live to matter.
            ?assert(list_to_integer(Signals) >= 200),
            ?assertEqual(0, Status, Output)
        end)
    end).

%% The kernel has no module loader: insmod of an ELF relocatable fails
%% because the system call does not exist, not because of the file, and
%% there is no /proc/modules.
no_modules() ->
    with_dir(fun(Dir) ->
        Source = filename:join(Dir, "evum_test.c"),
        Module = filename:join(Dir, "evum_test.ko"),
        ok = file:write_file(Source, [
            "int init_module(void) { return 0; }\n",
            "void cleanup_module(void) {}\n",
            "__attribute__((section(\".modinfo\"), used))\n",
            "static const char license[] = \"license=GPL\";\n"
        ]),
        ?assertMatch({0, _}, run("gcc", ["-c", "-O2", "-o", Module, Source])),
        ok = file:change_mode(Module, 8#644),
        with_guest(Dir, fun(Vm) ->
            ?assertEqual({ok, 0, <<"\dELF">>}, evum:cmd(Vm, "head -c 4 " ?MNT "/evum_test.ko")),
            {ok, Status, Output} = evum:cmd(Vm, "insmod " ?MNT "/evum_test.ko"),
            ?debugFmt("insmod in the guest: exit status ~b, ~ts", [Status, Output]),
            ?assertNotEqual(0, Status),
            %% ENOSYS (busybox's words for it, or strerror's): there is no
            %% init_module or finit_module at all. A kernel with modules
            %% says the file is no module instead.
            NoSyscall = [<<"kernel does not support requested operation">>, <<"Function not implemented">>],
            ?assertMatch({_, _}, binary:match(Output, NoSyscall), Output),
            ?assertEqual({ok, 1, <<>>}, evum:cmd(Vm, "test -e /proc/modules"))
        end)
    end).

%% Debian's kernel where the host runs it. Its fixed-size FPU state does not
%% fit every CPU's XSAVE area (AMX): there it cannot boot, and that is no
%% failure of evum's.
debian_kernel() ->
    case filelib:is_regular(?DEBIAN_KERNEL) of
        false ->
            ?debugFmt("skipped: ~s is not installed", [?DEBIAN_KERNEL]);
        true ->
            case evm:create([{kernel, ?DEBIAN_KERNEL}, {timeout, ?BOOT}]) of
                {ok, Vm} ->
                    try
                        {ok, 0, Release} = evum:cmd(Vm, "uname -r"),
                        ?debugFmt("~s runs on this host: ~ts", [?DEBIAN_KERNEL, string:trim(Release)]),
                        ?assertMatch(<<"6.1", _/binary>>, Release)
                    after
                        ok = evm:stop(Vm)
                    end;
                {error, Reason} ->
                    ?debugFmt("skipped: ~s does not run on this host: ~ts", [?DEBIAN_KERNEL, why(Reason)])
            end
    end,
    evum_tests:flush().

%% Why a kernel did not boot, in a line.
why({unsupported_host, Problem, _Fix}) ->
    Problem;
why(Reason) ->
    Last =
        case Reason of
            {boot_failed, _, Lines} -> Lines;
            _ -> []
        end,
    Console = Last ++ [L || L <- receive_all(), is_binary(L)],
    case [L || L <- Console, binary:match(L, <<"ptrace set fp regs failed">>) =/= nomatch] of
        [Line | _] ->
            io_lib:format("its console shows \"~ts\"", [Line]);
        [] when Last =/= [] ->
            io_lib:format("it ended (~0tp) before it was up, saying \"~ts\"", [element(2, Reason), lists:last(Last)]);
        [] ->
            io_lib:format("~0tp", [Reason])
    end.

receive_all() ->
    receive
        M -> [M | receive_all()]
    after 200 -> []
    end.

%% `make deps' built the kernel: evum_kernel finds it without building, its
%% guests report its release, and they boot with this host's own lpj.
cached_kernel() ->
    {ok, Path} = evum_kernel:path(),
    ?assertMatch({ok, #file_info{type = regular}}, file:read_file_info(Path)),
    ?assertEqual({ok, Path}, evum_kernel:ensure(fun(Step) -> error({built_again, Step}) end)),
    Lpj = evum_kernel:lpj(),
    ?assert(is_integer(Lpj) andalso Lpj > 0),
    LpjArg = "lpj=" ++ integer_to_list(Lpj),
    ?assertEqual({ok, Path, [{append, LpjArg}]}, evum_kernel:resolve(evum, fun(_) -> ok end)),
    ?assertEqual(
        {ok, <<"/usr/bin/linux">>, [{append, LpjArg}]}, evum_kernel:resolve("/usr/bin/linux", fun(_) -> ok end)
    ),
    ?assertEqual({error, {bad_option, {kernel, ""}}}, evm:create([{kernel, ""}])),
    {ok, Vm} = evm:create([{kernel, evum}, {timeout, ?BOOT}]),
    try
        {ok, 0, Cmdline} = evum:cmd(Vm, "cat /proc/cmdline"),
        ?assertEqual([LpjArg], [A || A <- string:lexemes(binary_to_list(Cmdline), " \n"), lists:prefix("lpj=", A)])
    after
        ok = evm:stop(Vm),
        evum_tests:flush()
    end.

%% The whole build path from Erlang, up to apt: a mirror that does not exist
%% fails the package index, the caller hears apt's reason (not a lost exit
%% status: the BEAM ignores SIGCHLD) after a progress report, and the cache
%% holds no kernel and no work tree.
unreachable_source() ->
    Cache = string:trim(os:cmd("mktemp -d /tmp/evum-kernel-cache-XXXXXX")),
    Before = [{K, application:get_env(evum, K)} || K <- [cache_dir, kernel_mirror]],
    application:set_env(evum, kernel_mirror, "file:///nonexistent/debian"),
    application:set_env(evum, cache_dir, Cache),
    Self = self(),
    try
        Result = evum_kernel:ensure(fun(Step) -> Self ! {step, Step} end),
        ?assertMatch({error, {kernel_build, _}}, Result),
        {error, {kernel_build, Why}} = Result,
        ?assertMatch({match, _}, re:run(Why, "apt-get -q update")),
        ?assertEqual(nomatch, re:run(Why, "No child processes")),
        receive
            {step, First} -> ?assertEqual({updating, <<"sid">>}, First)
        after 0 -> error(no_progress)
        end,
        ?assertEqual({error, not_built}, evum_kernel:path()),
        ?assertEqual([], filelib:wildcard(filename:join(Cache, "kernel/work-*")))
    after
        [
            case Value of
                {ok, V} -> application:set_env(evum, K, V);
                undefined -> application:unset_env(evum, K)
            end
         || {K, Value} <- Before
        ],
        os:cmd("rm -rf " ++ Cache),
        evum_tests:flush()
    end.
