%% Every input bounded: what a VM may take of the host (memory, file
%% descriptors, disk space) and what its options may say (sizes, paths) is
%% checked, and what runs out is named in the error, as a user of
%% evm:create/1 meets it: real guests, a real child BEAM under `ulimit -n',
%% real full file systems.
-module(evum_limits_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 60000).

limits_test_() ->
    {setup, fun setup/0, fun cleanup/1, fun(Dir) ->
        [
            {timeout, 300, {T, fun() -> ?MODULE:F(Dir) end}}
         || {T, F} <- [
                {"mem below what boots, above the host's memory, or not a size is a bad option", bad_mem},
                {"the least mem evum takes boots, and a guest's memory is what it asked", least_mem},
                {"a kernel that panics before its console names the panic, not the dump", early_panic},
                {"memory the host cannot give is refused, and nothing starts", insufficient_memory},
                {"memory promised is released however a VM ends", memory_released},
                {"with {overcommit, true} a VM of all the host's memory boots", overcommit},
                {"a BEAM out of file descriptors gets system_limit, and leaves nothing", open_files},
                {"a full state directory is no_space, and leaves no broken disk", full_state_dir},
                {"a full image cache is no_space", full_cache},
                {"disk, initrd, hostfs, uml_dir and kernel paths are bounded", bad_paths},
                {"a kernel command line longer than UML takes is refused before a boot", long_command_line},
                {"image sizes and files in the configuration are bounded", bad_image_config}
            ]
        ]
    end}.

setup() ->
    Dir = string:trim(os:cmd("mktemp -d /tmp/evum-limits-test-XXXXXX")),
    ok = file:change_mode(Dir, 8#755),
    application:load(evum),
    Env = [{K, application:get_env(evum, K)} || K <- [config, cache_dir, state_dir, kernel, mem_reserve]],
    %% evum's kernel lives in the cache: keep the one built in the default
    %% cache when a test points the cache elsewhere.
    {ok, Kernel} = evum_kernel:ensure(),
    application:set_env(evum, kernel, Kernel),
    {ok, _} = application:ensure_all_started(evum),
    {Dir, Env}.

cleanup({Dir, Env}) ->
    restore(Env),
    os:cmd("rm -rf " ++ Dir).

restore(Env) ->
    [
        case Value of
            {ok, V} -> application:set_env(evum, K, V);
            undefined -> application:unset_env(evum, K)
        end
     || {K, Value} <- Env
    ].

%%% Helpers

create(Options) ->
    evm:create([{timeout, ?BOOT} | Options]).

flush() ->
    receive
        _ -> flush()
    after 0 -> ok
    end.

%% Nothing started: no VM process besides those running before, no UML
%% process of this node, no message to the caller. (evm:create/1 returns
%% an error once the VM's process is gone.)
assert_nothing_started(VmsBefore) ->
    ?assertEqual(VmsBefore, vms()),
    assert_no_uml_left(os:getpid()),
    receive
        Message -> ?assertEqual(no_message, Message)
    after 200 -> ok
    end.

vms() ->
    proplists:get_value(active, supervisor:count_children(evum_vm_sup)).

assert_no_uml_left(OsPid) ->
    %% [e]: the pattern does not match the shell that runs pgrep.
    ?assertEqual("", os:cmd("pgrep -a -f 'umid=[e]vum-" ++ OsPid ++ "-' || true")).

%% The guest's MemTotal, in MB.
guest_mem_mb(Vm) ->
    {ok, 0, Meminfo} = evum:cmd(Vm, "cat /proc/meminfo"),
    {match, [Kb]} = re:run(Meminfo, "MemTotal: *([0-9]+) kB", [{capture, all_but_first, list}]),
    list_to_integer(Kb) div 1024.

%% A tmpfs of 1 MB at Dir, filled to the last byte.
full_tmpfs(Dir) ->
    ok = filelib:ensure_path(Dir),
    "" = os:cmd("mount -t tmpfs -o size=1M evum-limits " ++ Dir ++ " 2>&1"),
    os:cmd("dd if=/dev/zero of=" ++ Dir ++ "/fill bs=64k 2>/dev/null"),
    {ok, Free} = free_bytes(Dir),
    ?assertEqual(0, Free).

free_bytes(Dir) ->
    case string:lexemes(os:cmd("df --output=avail -B1 " ++ Dir ++ " | tail -1"), " \n") of
        [Avail] -> {ok, list_to_integer(Avail)};
        Other -> {error, Other}
    end.

unmount(Dir) ->
    os:cmd("umount " ++ Dir).

%% Runs Fun(Dir) with a full 1 MB tmpfs at Dir, unmounted after; needs
%% root (mount), which the tests run as.
with_full_tmpfs(Dir, Fun) ->
    case evum_nif:effective_uid() of
        0 ->
            full_tmpfs(Dir),
            try
                Fun(Dir)
            after
                unmount(Dir)
            end;
        _ ->
            io:format(user, "~nskipped: mounting a tmpfs needs root~n", [])
    end.

%% A config with one image `tiny' built from a busybox tree in Dir.
tiny_config(Dir) ->
    Tree = filename:join(Dir, "tree"),
    [ok = filelib:ensure_path(filename:join(Tree, D)) || D <- ["bin", "root", "tmp", "run", "proc", "sys", "dev"]],
    Busybox = filename:join(Tree, "bin/busybox"),
    {ok, _} = file:copy("/bin/busybox", Busybox),
    ok = file:change_mode(Busybox, 8#755),
    [file:make_symlink("busybox", filename:join(Tree, "bin/" ++ T)) || T <- ["sh", "ls", "cat", "sync"]],
    use_config(Dir, "tiny.toml", ["[image.tiny]\nfrom_dir = \"", Tree, "\"\nsize = \"32M\"\n"]).

use_config(Dir, Name, Text) ->
    File = filename:join(Dir, Name),
    ok = file:write_file(File, Text),
    application:set_env(evum, config, File),
    File.

%%% Memory

bad_mem(_) ->
    flush(),
    Before = vms(),
    Host = evum_mem:host_mb(),
    Min = evum_mem:min_mb(),
    Bad = [
        10,
        Min - 1,
        0,
        -1,
        Host + 1,
        1.5,
        "5M",
        integer_to_list(Min - 1) ++ "M",
        integer_to_list((Min bsl 20) - 1),
        integer_to_list(Host + 1) ++ "M",
        "100000G",
        "64X",
        "",
        lots
    ],
    [?assertEqual({error, {bad_option, {mem, M}}}, create([{mem, M}])) || M <- Bad],
    assert_nothing_started(Before).

least_mem(_) ->
    flush(),
    Min = evum_mem:min_mb(),
    {ok, Vm} = create([{mem, Min}]),
    ?assertEqual({ok, 0, <<"up\n">>}, evum:cmd(Vm, "echo up")),
    %% The kernel keeps a few MB of it for itself.
    ?assert(guest_mem_mb(Vm) =< Min),
    ok = evm:stop(Vm),
    {ok, Vm2} = create([{mem, integer_to_list(Min) ++ "M"}]),
    ?assertEqual({ok, 0, <<"up\n">>}, evum:cmd(Vm2, "echo up")),
    ok = evm:stop(Vm2),
    flush().

%% A kernel that panics before its console is up dumps its log with the
%% level of each line in front (`<4> [<6002d37a>] ...'): the dump is left
%% out all the same, so the panic's own line stays among the last 20.
early_panic({Dir, _}) ->
    Fake = filename:join(Dir, "panicking-linux"),
    Dump = lists:duplicate(15, [
        "echo '<4> [<6002bae9>] vpanic+0x154/0x3b1'\n",
        "echo '<4> 60521c57 60599230 60597d38 6052d9cb'\n"
    ]),
    ok = file:write_file(Fake, [
        "#!/bin/sh\n",
        "echo '<0>Kernel panic - not syncing: Failed to allocate 229376 bytes for node 0 memory map'\n",
        "echo '<4>Call Trace:'\n",
        Dump,
        "kill -ABRT $$\n"
    ]),
    ok = file:change_mode(Fake, 8#755),
    flush(),
    {error, {boot_failed, {signal, sigabrt}, Lines}} = create([{kernel, Fake}]),
    ?assertEqual(
        [<<"<0>Kernel panic - not syncing: Failed to allocate 229376 bytes for node 0 memory map">>, <<"<4>Call Trace:">>],
        Lines
    ),
    flush().

%% Asking for the host's whole memory passes what it can give (MemTotal
%% less mem_reserve, less what runs): refused with what is left, before
%% any process of the VM's is started.
insufficient_memory(_) ->
    flush(),
    Before = vms(),
    Committed = evum_mem:committed(),
    Ask = evum_mem:host_mb(),
    Available = evum_mem:limit_mb() - Committed,
    ?assert(Ask > Available),
    ?assertEqual(
        {error, {insufficient_memory, #{asked => Ask, available => Available}}},
        create([{label, limits_too_big}, {mem, Ask}])
    ),
    ?assertEqual(undefined, whereis(limits_too_big)),
    ?assertEqual(Committed, evum_mem:committed()),
    assert_nothing_started(Before).

%% With room for one 64 MB guest, a second is refused until the first has
%% ended, whether it stopped or was killed.
memory_released({_, Env}) ->
    flush(),
    Committed = evum_mem:committed(),
    application:set_env(evum, mem_reserve, evum_mem:host_mb() - Committed - 100),
    try
        {ok, A} = create([{mem, 64}]),
        ?assertEqual({error, {insufficient_memory, #{asked => 64, available => 36}}}, create([{mem, 64}])),
        ok = evm:stop(A),
        {ok, B} = create([{mem, 64}]),
        ?assertEqual({error, {insufficient_memory, #{asked => 64, available => 36}}}, create([{mem, 64}])),
        Down = monitor(process, B),
        %% The supervisor's report of the kill is expected: not on the output.
        logger:set_module_level(supervisor, none),
        exit(B, kill),
        receive
            {'DOWN', Down, process, B, _} -> logger:unset_module_level(supervisor)
        end,
        %% The ledger hears of it by its own monitor: wait for that.
        wait_committed(Committed, 50),
        {ok, C} = create([{mem, 64}]),
        ok = evm:stop(C)
    after
        restore([E || {mem_reserve, _} = E <- Env])
    end,
    ?assertEqual(Committed, evum_mem:committed()),
    flush().

wait_committed(Want, 0) ->
    ?assertEqual(Want, evum_mem:committed());
wait_committed(Want, Tries) ->
    case evum_mem:committed() of
        Want ->
            ok;
        _ ->
            timer:sleep(20),
            wait_committed(Want, Tries - 1)
    end.

%% UML allocates a guest's memory as the guest touches it, so a guest of
%% all the host's memory boots (its page structures take some 400 MB of a
%% 24 GB host) and sees it all.
overcommit(_) ->
    flush(),
    Host = evum_mem:host_mb(),
    {ok, Vm} = create([{mem, Host}, {overcommit, true}]),
    %% More than admission would have given it (UML keeps 1/64 of it for
    %% its page structures).
    ?assert(guest_mem_mb(Vm) > evum_mem:limit_mb()),
    ?assertEqual({ok, 0, <<"up\n">>}, evum:cmd(Vm, "echo up")),
    ?assertEqual({error, {bad_option, {overcommit, yes}}}, create([{overcommit, yes}])),
    ok = evm:stop(Vm),
    flush().

%%% File descriptors

%% A child BEAM with 64 descriptors (`ulimit -n 64'): a VM boots (the spawn
%% once asked for a descriptor above the limit and failed with EINVAL);
%% with every descriptor taken, evm:create/1 says so, and leaves no UML
%% process and no runtime directory.
open_files(_) ->
    Paths = lists:append([["-pa", P] || P <- code:get_path(), not lists:prefix(code:root_dir(), P)]),
    Erl = os:find_executable("erl"),
    Command = [
        "ulimit -n 64 && exec ",
        Erl,
        " -noshell",
        [[" ", quote(A)] || A <- Paths],
        " -eval 'evum_limits_tests:open_files_child().'"
    ],
    Output = os:cmd(lists:flatten(["sh -c ", quote(lists:flatten(Command)), " 2>/dev/null"])),
    {OsPid, Booted, Exhausted, Left} = result_term(Output),
    ?assertEqual({ok, 0, <<"up\n">>}, Booted),
    ?assertEqual({error, {system_limit, open_files}}, Exhausted),
    ?assertEqual({[], []}, Left),
    assert_no_uml_left(OsPid).

quote(Text) ->
    "'" ++ string:replace(Text, "'", "'\\''", all) ++ "'".

%% The Erlang term the child printed on its RESULT line.
result_term(Output) ->
    case [Line || "RESULT " ++ Line <- string:lexemes(Output, "\n")] of
        [Line] ->
            {ok, Tokens, _} = erl_scan:string(Line),
            {ok, Term} = erl_parse:parse_term(Tokens),
            Term;
        _ ->
            error({no_result, Output})
    end.

%% In the child: boots a VM under the limit, then takes every descriptor
%% left and creates another; prints what came of both, and what of them
%% is left on the host (UML processes, runtime directories).
open_files_child() ->
    {ok, _} = application:ensure_all_started(evum),
    {ok, Vm} = evm:create([{timeout, ?BOOT}]),
    Booted = evum:cmd(Vm, "echo up"),
    ok = evm:stop(Vm),
    flush(),
    %% Nothing may be printed or loaded while the descriptors are taken.
    Held = hold_descriptors([]),
    Exhausted = evm:create([{timeout, ?BOOT}]),
    [file:close(F) || F <- Held],
    timer:sleep(200),
    OsPid = os:getpid(),
    Uml = os:cmd("pgrep -f 'umid=[e]vum-" ++ OsPid ++ "-' || true"),
    Dirs = filelib:wildcard(filename:join(runtime_base(), "evum-" ++ OsPid ++ "-*")),
    io:format("~nRESULT ~0p.~n", [{OsPid, Booted, Exhausted, {string:lexemes(Uml, "\n"), Dirs}}]),
    halt().

hold_descriptors(Held) ->
    case file:open("/dev/null", [read, raw]) of
        {ok, F} -> hold_descriptors([F | Held]);
        {error, _} -> Held
    end.

runtime_base() ->
    case evum_nif:effective_uid() of
        0 -> "/run/evum/vms";
        _ -> filename:join(os:getenv("XDG_RUNTIME_DIR", "/tmp"), "evum")
    end.

%%% Disk space

%% Labels' disks live in the state directory: a full one fails the making
%% of a label's COW, which is named, and removed (a COW cut short would be
%% taken for a disk at the next boot and fail it).
full_state_dir({Dir, Env}) ->
    tiny_config(Dir),
    application:set_env(evum, cache_dir, filename:join(Dir, "cache")),
    State = filename:join(Dir, "state"),
    try
        with_full_tmpfs(State, fun(_) ->
            application:set_env(evum, state_dir, State),
            Cow = list_to_binary(filename:join([State, "disks", "limits_full", "tiny.cow"])),
            flush(),
            Before = vms(),
            ?assertEqual({error, {no_space, Cow}}, create([{label, limits_full}, {dist, tiny}])),
            ?assertNot(filelib:is_file(Cow)),
            assert_nothing_started(Before),
            %% Room again: the label boots.
            ok = file:delete(filename:join(State, "fill")),
            {ok, Vm} = create([{label, limits_full}, {dist, tiny}]),
            ?assertEqual({ok, 0, <<"base\n">>}, evum:cmd(Vm, "echo base")),
            ok = evm:stop(Vm),
            ok = evm:destroy(limits_full),
            %% An empty COW (what a BEAM killed during uml_mkcow leaves) is
            %% made again rather than booted.
            ok = filelib:ensure_dir(Cow),
            ok = file:write_file(Cow, <<>>),
            {ok, Vm2} = create([{label, limits_full}, {dist, tiny}]),
            ?assertEqual({ok, 0, <<"again\n">>}, evum:cmd(Vm2, "echo again")),
            ok = evm:stop(Vm2),
            ok = evm:destroy(limits_full)
        end)
    after
        restore([E || {K, _} = E <- Env, lists:member(K, [config, cache_dir, state_dir])])
    end,
    flush().

%% The busybox initramfs every guest boots from is built into the cache on
%% first use: a full cache is named.
full_cache({Dir, Env}) ->
    Cache = filename:join(Dir, "full-cache"),
    try
        with_full_tmpfs(Cache, fun(_) ->
            application:set_env(evum, cache_dir, Cache),
            flush(),
            Before = vms(),
            {error, {no_space, Path}} = create([]),
            ?assertEqual(Cache, filename:dirname(binary_to_list(Path))),
            assert_nothing_started(Before),
            %% Nothing half-written is left in it.
            ?assertEqual({ok, ["fill"]}, file:list_dir(Cache))
        end)
    after
        restore([E || {cache_dir, _} = E <- Env])
    end.

%%% Paths and sizes

bad_paths(_) ->
    flush(),
    Before = vms(),
    Long = "/" ++ lists:duplicate(4095, $x),
    Bad = [
        {disk, "/tmp/a,b.img"},
        {disk, "/tmp/a:b.img"},
        {disk, 1, "/tmp/a,b.img"},
        {disk, Long},
        {disk, "/tmp/a\0b"},
        {disk, ""},
        {ubd, 1, "/tmp/cow,/tmp/base,serial,more"},
        {ubd, 1, "/tmp/cow,"},
        {ubd, 1, [$/ | lists:duplicate(4095, $c)] ++ ",/tmp/base"},
        {initrd, Long},
        {initrd, "/tmp/a\0b"},
        {hostfs, Long},
        {hostfs, ""}
    ],
    [?assertEqual({error, {bad_option, O}}, create([O])) || O <- Bad],
    [
        ?assertEqual({error, {bad_option, O}}, create([O]))
     || O <- [{uml_dir, "/tmp/a,b"}, {uml_dir, "/tmp/a:b"}, {uml_dir, Long}, {kernel, "/tmp/linux\0"}, {kernel, Long}]
    ],
    assert_nothing_started(Before).

%% UML holds its command line in 4096 bytes and exits at boot when the
%% arguments do not fit: evum counts them first.
long_command_line(_) ->
    flush(),
    Before = vms(),
    {error, {bad_option, Why}} = create([{env, "FOO", lists:duplicate(4000, $x)}]),
    ?assertMatch({_, _}, binary:match(Why, <<"command line">>)),
    assert_nothing_started(Before),
    %% Well within it, the value reaches the guest whole.
    {ok, Vm} = create([{env, "FOO", lists:duplicate(2000, $x)}]),
    ?assertEqual({ok, 0, <<"2000\n">>}, evum:cmd(Vm, "echo ${#FOO}")),
    ok = evm:stop(Vm),
    flush().

bad_image_config({Dir, Env}) ->
    try
        Cases = [
            {"size = \"0M\"", <<"image.x.size">>},
            {"size = \"1025G\"", <<"image.x.size">>},
            {"size = \"-1G\"", <<"image.x.size">>}
        ],
        [
            begin
                File = use_config(Dir, "size.toml", ["[image.x]\nfrom_dir = \"/tmp\"\n", Line, "\n"]),
                ?assertMatch({error, {config, _, Key, _}}, evm:create([{dist, x}])),
                {error, {config, Named, _, _}} = evm:create([{dist, x}]),
                ?assertEqual(list_to_binary(File), Named)
            end
         || {Line, Key} <- Cases
        ],
        [
            begin
                use_config(Dir, "file.toml", ["[image.x]\nfile = \"", Path, "\"\n"]),
                ?assertMatch({error, {config, _, <<"image.x.file">>, _}}, evm:create([{dist, x}]))
            end
         || Path <- ["/srv/a,b.ext4", "/srv/a:b.ext4", "/srv/a\\u0000b"]
        ],
        %% An image's own mem= is checked as the option is.
        Z = filename:join(Dir, "z.ext4"),
        ok = file:write_file(Z, <<>>),
        use_config(Dir, "mem.toml", ["[image.z]\nfile = \"", Z, "\"\nargs = [\"mem=5M\"]\n"]),
        ?assertEqual({error, {bad_option, {mem, <<"5M">>}}}, evm:create([{dist, z}])),
        %% A cache directory whose path would split the disk spec is named.
        use_config(Dir, "ok.toml", ["[image.y]\nfile = \"y.ext4\"\n"]),
        Odd = filename:join(Dir, "odd,cache"),
        ok = filelib:ensure_path(filename:join(Odd, "images")),
        ok = file:write_file(filename:join([Odd, "images", "y.ext4"]), <<>>),
        application:set_env(evum, cache_dir, Odd),
        Base = list_to_binary(filename:join([Odd, "images", "y.ext4"])),
        ?assertEqual({error, {bad_option, {disk, Base}}}, evm:create([{dist, y}]))
    after
        restore([E || {K, _} = E <- Env, lists:member(K, [config, cache_dir])])
    end.
