%% Boots that fail say why, and the options of newer kernels (seccomp,
%% cpus) do what the README says on a kernel that has them and are refused,
%% before anything starts, on one that has not.
-module(evum_boot_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 60000).
%% evum's own kernel while it is not the default yet.
%% Debian's UML 6.1, which has neither seccomp mode nor SMP.
-define(DEBIAN_KERNEL, "/usr/bin/linux").

boot_test_() ->
    {setup, fun setup/0, fun cleanup/1, [
        {timeout, 120, {T, fun() -> ?MODULE:F() end}}
     || {T, F} <- [
            {"a kernel that panics in boot gives boot_failed with its panic", panic},
            {"a kernel that exits in boot gives boot_failed with its reason", exit_in_boot},
            {"the lines are the last 20, cut at 512 bytes, without stack dumps", bounded_lines},
            {"a known host incompatibility is named with its fix", unsupported_host},
            {"seccomp on a kernel that has it", seccomp},
            {"cpus on a kernel that has them: the guest sees them", cpus},
            {"bad seccomp and cpus values are bad options", bad_values},
            {"a kernel without seccomp or SMP is refused before a boot", unsupported_by_kernel},
            {"VMs take turns to boot, as many at once as boot_concurrency says", turns},
            {"init sets up what a shell and a network expect, with two processes of its own", guest_setup},
            {"the busybox root is a tmpfs: a full root is an error, not a guest out of memory", tmpfs_root},
            {"no value splits the kernel's command line into parameters of its choosing", injection}
        ]
    ]}.

setup() ->
    {ok, _} = application:ensure_all_started(evum),
    ok.

cleanup(_) ->
    ok.

%%% Helpers

%% The kernel that has seccomp, as a path: the application's (evum's own
%% by default; its SMP flavour is beside it).
kernel() ->
    case application:get_env(evum, kernel) of
        {ok, evum} ->
            {ok, Path} = evum_kernel:ensure(),
            binary_to_list(Path);
        {ok, K} ->
            K
    end.

%% Runs Fun with the kernel at Path, or says why not.
with_kernel(Path, Fun) ->
    case filelib:is_regular(Path) of
        true -> Fun(Path);
        false -> io:format(user, "~nskipped: no UML kernel at ~ts~n", [Path])
    end.

create(Options) ->
    evm:create([{timeout, ?BOOT} | Options]).

%% The exit the owner is told of, after every console line.
owner_exit() ->
    receive
        {evum, _, {exit, How}} -> How
    after 15000 -> error(no_exit)
    end.

has_line(Part, Lines) ->
    lists:any(fun(L) -> binary:match(L, Part) =/= nomatch end, Lines).

%% The lines a boot failure carries are a bounded tail of the console.
assert_bounded(Lines) ->
    ?assert(length(Lines) =< 20),
    ?assert(lists:all(fun(L) -> is_binary(L) andalso byte_size(L) =< 512 end, Lines)).

%% Nothing of any VM of this test is left on the host.
assert_no_uml_left() ->
    %% [e]: the pattern does not match the shell that runs pgrep.
    Mine = os:cmd("pgrep -a -f 'umid=[e]vum-" ++ os:getpid() ++ "-' || true"),
    ?assertEqual("", Mine).

%% Runs Fun with a new VM, which is stopped whatever happens.
with_vm(Options, Fun) ->
    evum_tests:flush(),
    {ok, Vm} = create(Options),
    try
        Fun(Vm)
    after
        evm:stop(Vm),
        evum_tests:flush()
    end.

%%% Cases

%% No initramfs init: the kernel mounts the root it is told of (the
%% busybox image names a tmpfs, empty), finds no init there either, panics,
%% prints a stack dump, and aborts. The panic's message is among the lines;
%% the stack dump is not.
panic() ->
    Kernels = [kernel(), ?DEBIAN_KERNEL],
    [with_kernel(K, fun panic/1) || K <- lists:usort(Kernels)],
    assert_no_uml_left().

panic(Kernel) ->
    evum_tests:flush(),
    {error, {boot_failed, How, Lines}} = create([{kernel, Kernel}, {append, "rdinit=/nonexistent"}]),
    ?assertEqual({signal, sigabrt}, How),
    ?assert(has_line(<<"Kernel panic - not syncing: Requested init /init failed (error -2).">>, Lines)),
    ?assertNot(has_line(<<"[<">>, Lines)),
    assert_bounded(Lines),
    %% The owner is told as before, and got the lines as console messages.
    ?assertEqual(How, owner_exit()),
    evum_tests:flush().

%% The guest's init finds no root to mount (it is told the root is a disk,
%% and there is none): it says so and powers the guest off, which the
%% kernel ends with exit status 0. (Too little memory, the kernel's own
%% early exit, is refused before a boot now: see evum_limits_tests.)
exit_in_boot() ->
    evum_tests:flush(),
    {error, {boot_failed, How, Lines}} = create([{kernel, kernel()}, {env, "EVUM_ROOT", "ubda"}]),
    ?assertEqual({exit_status, 0}, How),
    ?assert(has_line(<<"evum: cannot mount the root (ubda)">>, Lines)),
    assert_bounded(Lines),
    ?assertEqual(How, owner_exit()),
    evum_tests:flush().

%% A script plays a kernel that prints 30 lines, one of them long and some
%% of them a stack dump, then exits.
bounded_lines() ->
    Long = lists:duplicate(1000, $x),
    Script = [
        [
            case N of
                25 -> ["echo ", Long, "\n"];
                26 -> "echo ' [<6002d37a>] ? _printk+0x0/0x57'\n";
                27 -> "echo ' 60521d5c 6086c130 64803cd8 6052dad0'\n";
                _ -> ["echo 'line ", integer_to_list(N), "'\n"]
            end
         || N <- lists:seq(1, 30)
        ],
        "exit 3\n"
    ],
    with_fake_kernel(Script, fun(Fake) ->
        {error, {boot_failed, How, Lines}} = create([{kernel, Fake}]),
        ?assertEqual({exit_status, 3}, How),
        %% 28 lines but the dump's two: the last 20 are 9 to 24, the long
        %% one cut, then 28 to 30.
        Line = fun(N) -> iolist_to_binary(["line ", integer_to_list(N)]) end,
        Cut = list_to_binary(lists:duplicate(512, $x)),
        ?assertEqual([Line(N) || N <- lists:seq(9, 24)] ++ [Cut | [Line(N) || N <- [28, 29, 30]]], Lines),
        ?assertEqual(How, owner_exit()),
        evum_tests:flush()
    end).

%% Runs Fun with an executable script in the place of a kernel.
with_fake_kernel(Script, Fun) ->
    Dir = filename:join(os:getenv("TMPDIR", "/tmp"), "evum-boot-tests-" ++ os:getpid()),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Fake = filename:join(Dir, "linux"),
    ok = file:write_file(Fake, ["#!/bin/sh\n", Script]),
    ok = file:change_mode(Fake, 8#755),
    try
        Fun(Fake)
    after
        file:del_dir_r(Dir)
    end.

%% Debian's 6.1 on an AMX host dies with `ptrace set fp regs failed'. This
%% host may have no AMX, so a script plays that kernel: it prints the line
%% and aborts. The error names the problem and the fix; the lines go to the
%% logger.
unsupported_host() ->
    Script = [
        "echo 'userspace - ptrace set fp regs failed, errno = 14'\n",
        "echo 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009'\n",
        "kill -ABRT $$\n"
    ],
    ok = logger:add_handler(?MODULE, ?MODULE, #{config => #{pid => self()}}),
    %% The report is expected: keep it off the test's output.
    {ok, #{level := Level}} = logger:get_handler_config(default),
    ok = logger:set_handler_config(default, level, none),
    try
        with_fake_kernel(Script, fun(Fake) ->
            evum_tests:flush(),
            {error, {unsupported_host, Problem, Fix}} = create([{kernel, Fake}]),
            ?assert(is_binary(Problem) andalso binary:match(Problem, <<"XSAVE">>) =/= nomatch),
            ?assert(is_binary(Fix) andalso binary:match(Fix, <<"evum's own kernel">>) =/= nomatch),
            ?assertEqual({signal, sigabrt}, owner_exit()),
            Logged = logged("ptrace set fp regs failed"),
            ?assertNotEqual(nomatch, string:find(Logged, "Kernel panic"))
        end)
    after
        logger:set_handler_config(default, level, Level),
        logger:remove_handler(?MODULE),
        evum_tests:flush()
    end.

%% The first error logged that has Part in it.
logged(Part) ->
    receive
        {logged, Text} ->
            case string:find(Text, Part) of
                nomatch -> logged(Part);
                _ -> Text
            end
    after 5000 -> error({not_logged, Part})
    end.

%% logger handler callback: hands each error event's text to the test.
log(#{level := error, msg := Msg}, #{config := #{pid := Pid}}) ->
    Text =
        case Msg of
            {string, S} -> S;
            {report, R} -> io_lib:format("~p", [R]);
            {Format, Args} -> io_lib:format(Format, Args)
        end,
    Pid ! {logged, unicode:characters_to_list(Text)};
log(_Event, _Config) ->
    ok.

%% Seccomp mode shows on the host: the guest's processes (the UML
%% process's helpers in its process group) run under a seccomp filter
%% (`Seccomp: 2' in /proc/PID/status) and nobody traces them; in ptrace
%% mode the UML process traces every one. The kernel takes `seccomp=' and
%% `ncpus=' off its command line, so /proc/cmdline does not show them.
seccomp() ->
    with_kernel(kernel(), fun(Kernel) ->
        with_vm([{kernel, Kernel}, {seccomp, true}], fun(Vm) ->
            ?assertEqual(seccomp, userspace_mode(Vm)),
            ?assertEqual({ok, 0, <<"1\n">>}, evum:cmd(Vm, "nproc")),
            ?assertEqual({ok, 0, <<"3\n">>}, evum:cmd(Vm, "seq 3 | sort -r | head -n 1"))
        end),
        %% {seccomp, false} is ptrace, every kernel's default.
        with_vm([{kernel, Kernel}, {seccomp, false}], fun(Vm) ->
            ?assertEqual(ptrace, userspace_mode(Vm))
        end)
    end),
    assert_no_uml_left().

cpus() ->
    case application:get_env(evum, kernel) of
        {ok, evum} ->
            %% evum's kernel comes in two flavours: {cpus, N} boots the SMP
            %% one by itself, every other VM the one without SMP, which
            %% refuses cpus by name when given as a path.
            {ok, Up} = evum_kernel:ensure(),
            Smp = filename:join(filename:dirname(Up), "linux-smp"),
            with_vm([{cpus, 2}], fun(Vm) ->
                assert_cpus(Vm, 2),
                ?assertEqual({ok, Smp}, kernel_of(Vm))
            end),
            with_vm([], fun(Vm) ->
                ?assertEqual({ok, 0, <<"1\n">>}, evum:cmd(Vm, "nproc")),
                ?assertEqual({ok, Up}, kernel_of(Vm))
            end),
            ?assertEqual({error, {unsupported_by_kernel, Up, cpus}}, evm:create([{kernel, Up}, {cpus, 2}]));
        {ok, Kernel} ->
            with_kernel(Kernel, fun(K) -> with_vm([{kernel, K}, {cpus, 2}], fun(Vm) -> assert_cpus(Vm, 2) end) end)
    end,
    assert_no_uml_left().

assert_cpus(Vm, N) ->
    Text = integer_to_binary(N),
    ?assertEqual({ok, 0, <<Text/binary, "\n">>}, evum:cmd(Vm, "nproc")),
    ?assertEqual({ok, 0, <<Text/binary, "\n">>}, evum:cmd(Vm, "grep -c ^processor /proc/cpuinfo")),
    %% cpus implies seccomp: UML starts SMP only in seccomp mode.
    ?assertEqual(seccomp, userspace_mode(Vm)).

%% The binary the VM's UML process runs.
kernel_of(Vm) ->
    #{os_pid := OsPid} = evum:info(Vm),
    case file:read_link("/proc/" ++ integer_to_list(OsPid) ++ "/exe") of
        {ok, Exe} -> {ok, list_to_binary(Exe)};
        {error, _} = Error -> Error
    end.

%% How the VM runs its guest's processes, as the host sees them.
userspace_mode(Vm) ->
    {ok, 0, _} = evum:cmd(Vm, "sleep 2 & true"),
    #{os_pid := OsPid} = evum:info(Vm),
    Tracer = integer_to_binary(OsPid),
    Modes = lists:usort([
        case Status of
            #{<<"Seccomp">> := <<"2">>, <<"TracerPid">> := <<"0">>} -> seccomp;
            #{<<"Seccomp">> := <<"0">>, <<"TracerPid">> := Tracer} -> ptrace;
            _ -> {other, Status}
        end
     || Pid <- group_members(OsPid),
        Pid =/= OsPid,
        Status <- [proc_status(Pid)],
        map_size(Status) > 0
    ]),
    case Modes of
        [Mode] -> Mode;
        _ -> {mixed, Modes}
    end.

%% The processes of a process group.
group_members(Pgrp) ->
    [
        list_to_integer(filename:basename(Dir))
     || Dir <- filelib:wildcard("/proc/[0-9]*"),
        process_group(Dir) =:= Pgrp
    ].

%% The process group in /proc/PID/stat, after the command name in
%% parentheses (which may itself hold ") ").
process_group(Dir) ->
    case file:read_file(filename:join(Dir, "stat")) of
        {ok, Stat} ->
            {At, Len} = lists:last(binary:matches(Stat, <<") ">>)),
            [_State, _Ppid, Pgrp | _] = binary:split(binary:part(Stat, At + Len, byte_size(Stat) - At - Len), <<" ">>, [global]),
            binary_to_integer(Pgrp);
        {error, _} ->
            undefined
    end.

%% /proc/PID/status as a map (empty for a process gone meanwhile).
proc_status(Pid) ->
    case file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/status") of
        {ok, Text} ->
            maps:from_list([
                {Key, string:trim(Value)}
             || Line <- binary:split(Text, <<"\n">>, [global]),
                [Key, Value] <- [binary:split(Line, <<":">>)]
            ]);
        {error, _} ->
            #{}
    end.

bad_values() ->
    evum_tests:flush(),
    [
        ?assertEqual({error, {bad_option, Bad}}, evm:create([Bad]))
     || Bad <- [{cpus, 0}, {cpus, 9}, {cpus, two}, {cpus, 2.0}, {seccomp, maybe}, {seccomp, "true"}]
    ],
    ?assertEqual(
        {error, {bad_option, {{cpus, 2}, {seccomp, false}}}},
        evm:create([{cpus, 2}, {seccomp, false}])
    ),
    %% Given twice: the NIF names it.
    ?assertMatch({error, {bad_option, _}}, evm:create([{cpus, 2}, {cpus, 4}])),
    ?assertEqual(ok, receive M -> {unexpected, M} after 0 -> ok end).

%% Debian's 6.1 has neither: refused by name, and nothing is started (no
%% message comes to the owner, the label is free).
unsupported_by_kernel() ->
    with_kernel(?DEBIAN_KERNEL, fun(Kernel) ->
        evum_tests:flush(),
        Path = list_to_binary(Kernel),
        Refused = [
            {[{seccomp, true}], seccomp},
            {[{cpus, 2}], cpus},
            {[{cpus, 1}], cpus},
            {[{seccomp, true}, {cpus, 2}], seccomp}
        ],
        [
            ?assertEqual(
                {error, {unsupported_by_kernel, Path, Option}},
                evm:create([{label, evum_boot_unsupported}, {kernel, Kernel} | Options])
            )
         || {Options, Option} <- Refused
        ],
        %% A bare name is the file on PATH.
        case os:find_executable("linux") of
            Kernel ->
                ?assertEqual(
                    {error, {unsupported_by_kernel, Path, seccomp}},
                    evm:create([{kernel, "linux"}, {seccomp, true}])
                );
            _ ->
                ok
        end,
        ?assertEqual(undefined, whereis(evum_boot_unsupported)),
        ?assertEqual(ok, receive M -> {unexpected, M} after 200 -> ok end)
    end).

%% Six VMs created at once with room for two: all come up, never more than
%% two boot together, the others wait; a waiting VM whose owner dies
%% leaves the line.
turns() ->
    Before = application:get_env(evum, boot_concurrency),
    application:set_env(evum, boot_concurrency, 2),
    Self = self(),
    try
        Owners = [
            spawn_link(fun() ->
                Self ! {created, self(), evm:create([{timeout, 60000}])},
                receive
                    stop -> ok
                end
            end)
         || _ <- lists:seq(1, 6)
        ],
        {Seen, Answers} = watch_gate(length(Owners), [], []),
        ?assert(lists:max([B || #{booting := B} <- Seen]) =< 2),
        ?assert(lists:max([W || #{waiting := W} <- Seen]) >= 1),
        ?assertEqual(6, length([ok || {created, _, {ok, _}} <- Answers])),
        [O ! stop || O <- Owners],
        %% Owners gone, VMs gone: nothing boots or waits.
        application:set_env(evum, boot_concurrency, 1),
        Waiter = spawn(fun() -> evm:create([]) end),
        Blocker = spawn(fun() -> evm:create([]) end),
        timer:sleep(5),
        exit(Waiter, kill),
        exit(Blocker, kill),
        wait_until(fun() -> evum_boot_gate:status() == #{booting => 0, waiting => 0, limit => 1} end)
    after
        case Before of
            {ok, V} -> application:set_env(evum, boot_concurrency, V);
            undefined -> application:unset_env(evum, boot_concurrency)
        end,
        evum_tests:flush()
    end.

%% The gate's status every few milliseconds until N creates have answered,
%% and their answers.
watch_gate(0, Seen, Answers) ->
    {Seen, Answers};
watch_gate(N, Seen, Answers) ->
    Status = evum_boot_gate:status(),
    receive
        {created, _, _} = Answer -> watch_gate(N - 1, [Status | Seen], [Answer | Answers])
    after 3 -> watch_gate(N, [Status | Seen], Answers)
    end.

wait_until(Done) ->
    wait_until(Done, 200).

wait_until(Done, 0) ->
    ?assert(Done());
wait_until(Done, Tries) ->
    case Done() of
        true ->
            ok;
        false ->
            timer:sleep(25),
            wait_until(Done, Tries - 1)
    end.

%% What evum's init (priv/guest/evum-init.c) does with system calls instead
%% of a process per step: the file systems, the hostname, loopback, the
%% switch's interface named eth0, a console shell with a controlling tty,
%% and besides itself only the command loop and that shell.
guest_setup() ->
    {ok, Switch} = evum_switch:start(),
    try
        with_vm([{switch, Switch}, {hostname, "setup"}], fun(Vm) ->
            {ok, 0, Mounts} = evum:cmd(Vm, "cut -d' ' -f1-3 /proc/mounts"),
            [
                ?assert(has_line(M, binary:split(Mounts, <<"\n">>, [global])))
             || M <- [<<"proc /proc proc">>, <<"sysfs /sys sysfs">>, <<"devtmpfs /dev devtmpfs">>,
                      <<"devpts /dev/pts devpts">>]
            ],
            ?assertEqual({ok, 0, <<"setup\n">>}, evum:cmd(Vm, "hostname")),
            ?assertEqual({ok, 0, <<"eth0\nlo\n">>}, evum:cmd(Vm, "ls /sys/class/net")),
            {ok, 0, Lo} = evum:cmd(Vm, "ifconfig lo"),
            ?assertNotEqual(nomatch, binary:match(Lo, <<"inet addr:127.0.0.1  Mask:255.0.0.0">>)),
            ?assertNotEqual(nomatch, binary:match(Lo, <<"UP LOOPBACK RUNNING">>)),
            ?assertMatch({ok, 0, _}, evum:cmd(Vm, "ping -c 1 -W 2 127.0.0.1")),
            ?assertEqual({ok, 0, <<"1777\n">>}, evum:cmd(Vm, "stat -c %a /dev/shm")),
            %% PID 1 and its two children: the command loop (running this
            %% command) and the console's login shell, which leads its own
            %% session with the console's tty as its controlling terminal.
            ?assertEqual({ok, 0, <<"2\n">>}, evum:cmd(Vm, "ps -o ppid | grep -cx ' *1'")),
            evum_tests:flush(),
            Check = "tty; cut -d' ' -f6 /proc/$$/stat; echo $$",
            ?assertEqual(list_to_binary(Check), evum:send(Vm, Check)),
            ?assertEqual(<<"/dev/tty0">>, next_console_line(Vm)),
            Session = next_console_line(Vm),
            ?assertEqual(Session, next_console_line(Vm))
        end)
    after
        evum_switch:stop(Switch)
    end.

%% The busybox guest's root (its initramfs, unpacked) is a tmpfs of half
%% the guest's memory, as a tmpfs is by default: writing past that fails
%% with ENOSPC and the guest lives on, with its memory back once the file
%% is gone. (On ramfs, which UML's default `root=98:0' would otherwise
%% choose, the write eats the guest's memory until its OOM killer runs.)
tmpfs_root() ->
    with_vm([{mem, "64M"}], fun(Vm) ->
        ?assertEqual({ok, 0, <<"tmpfs\n">>}, evum:cmd(Vm, "stat -f -c %T /")),
        Free = fun() ->
            {ok, 0, Kb} = evum:cmd(Vm, "awk '/^MemAvailable/ {print $2}' /proc/meminfo"),
            binary_to_integer(string:trim(Kb))
        end,
        Before = Free(),
        {ok, Status, Out} = evum:cmd(Vm, "dd if=/dev/zero of=/big bs=1M count=64 2>&1", 60000),
        ?assertNotEqual(0, Status),
        ?assertNotEqual(nomatch, binary:match(Out, <<"No space left on device">>)),
        {ok, 0, Size} = evum:cmd(Vm, "stat -c %s /big"),
        %% Half of what the guest has (its memory less the kernel's own).
        ?assert(binary_to_integer(string:trim(Size)) < 32 bsl 20),
        ?assert(binary_to_integer(string:trim(Size)) > 16 bsl 20),
        ?assertEqual({ok, 0, <<>>}, evum:cmd(Vm, "rm /big")),
        ?assert(Free() > Before - 1024)
    end),
    %% A root type the user names is the one the guest gets.
    with_vm([{rootfstype, "ramfs"}], fun(Vm) ->
        ?assertEqual({ok, 0, <<"ramfs\n">>}, evum:cmd(Vm, "stat -f -c %T /"))
    end).

next_console_line(Vm) ->
    receive
        {evum, Vm, {console, Line}} -> Line;
        Line when is_binary(Line) -> Line
    after 5000 -> error(no_console_line)
    end.

%% The kernel splits its command line at any byte its isspace() takes,
%% 0x0b and 0xa0 (in a UTF-8 `à') included: a value carrying one would add
%% a parameter (here, the host's /etc/shadow as a disk). Each is refused
%% before anything starts.
injection() ->
    Injected = [
        [{hostname, "evm\vubd2r=/etc/shadow"}],
        [{hostname, <<"evm", 16#a0, "ubd2r=/etc/shadow">>}],
        [{hostname, "évm"}],
        [{rootflags, "ro\fubd1=/etc/passwd"}],
        [{append, "panic=0\vubd1=/etc/shadow"}],
        [{append, "quiet mem=4G"}],
        [{env, "EVUM_X", "a\rubd3=/etc/shadow"}]
    ],
    [?assertMatch({error, {bad_option, _}}, create(Options), Options) || Options <- Injected],
    assert_no_uml_left().
