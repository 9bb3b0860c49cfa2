%% Images, configuration and copy-on-write disks, as a user meets them:
%% real config files, a real HTTP server on the loopback serving an image
%% the test built, real guests booted from it.
-module(evum_image_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 30000).

image_test_() ->
    {setup, fun setup/0, fun cleanup/1, fun(Dir) ->
        [
            {timeout, 300, {T, fun() -> ?MODULE:F(Dir) end}}
         || {T, F} <- [
                {"the shipped evm.toml and the original evm.cfg", config_files},
                {"a bad config names the file, the key and what was expected", bad_config},
                {"an image downloaded from a loopback server boots", download},
                {"a wrong checksum leaves no image", wrong_checksum},
                {"a cut transfer resumes where it stopped", resumed_download},
                {"labels on one base image see only their own writes", copy_on_write},
                {"a label's disk survives a stop, destroy resets it", persistence},
                {"a disk in use by another BEAM is refused", disk_in_use},
                {"a directory image is read-only; init_cmd is the main program", dir_image},
                {"unknown dists and options are errors", errors},
                {"an extra disk is the guest's second block device", extra_disk},
                {"guest root cannot change a read-only disk, nor the busybox disk every VM shares",
                    read_only_disks},
                {"debian, built with debootstrap from the host's mirror, boots", debian}
            ]
        ]
    end}.

setup() ->
    Dir = string:trim(os:cmd("mktemp -d /tmp/evum-image-test-XXXXXX")),
    %% A dir image is read by the unprivileged user VMs run as under root.
    ok = file:change_mode(Dir, 8#755),
    application:load(evum),
    Env = [{K, application:get_env(evum, K)} || K <- [config, cache_dir, state_dir, kernel]],
    %% evum's kernel lives in the cache too: keep the one built in the
    %% default cache rather than build another in the test's.
    {ok, Kernel} = evum_kernel:ensure(),
    application:set_env(evum, kernel, Kernel),
    application:set_env(evum, cache_dir, filename:join(Dir, "cache")),
    application:set_env(evum, state_dir, filename:join(Dir, "state")),
    {ok, _} = application:ensure_all_started(evum),
    Tree = filename:join(Dir, "tree"),
    make_tree(Tree),
    Image = filename:join(Dir, "base.ext4"),
    "0\n" = os:cmd("/usr/sbin/mke2fs -q -F -t ext4 -d " ++ Tree ++ " " ++ Image ++ " 32M >/dev/null 2>&1; echo $?"),
    "0\n" = os:cmd("gzip -k " ++ Image ++ "; echo $?"),
    {Dir, Env}.

cleanup({Dir, Env}) ->
    [
        case Value of
            {ok, V} -> application:set_env(evum, K, V);
            undefined -> application:unset_env(evum, K)
        end
     || {K, Value} <- Env
    ],
    os:cmd("rm -rf " ++ Dir).

%% A minimal root: busybox's sh and a few tools, and a file to find.
make_tree(Tree) ->
    [ok = filelib:ensure_path(filename:join(Tree, D)) || D <- ["bin", "root", "tmp", "run", "proc", "sys", "dev"]],
    {ok, _} = file:copy("/bin/busybox", filename:join(Tree, "bin/busybox")),
    ok = file:change_mode(filename:join(Tree, "bin/busybox"), 8#755),
    [ok = file:make_symlink("busybox", filename:join(Tree, "bin/" ++ T)) || T <- ["sh", "ls", "cat", "echo", "touch", "sync", "sleep"]],
    ok = file:write_file(filename:join(Tree, "root/base.txt"), <<"from the base image\n">>).

%% Points evum at a user config of this text.
use_config({Dir, _}, Name, Text) ->
    File = filename:join(Dir, Name),
    ok = file:write_file(File, Text),
    application:set_env(evum, config, File),
    File.

%% A config with one image `tiny' built from the test's tree.
tiny_config(D = {Dir, _}) ->
    use_config(D, "tiny.toml", [
        "[image.tiny]\nfrom_dir = \"", filename:join(Dir, "tree"), "\"\nsize = \"32M\"\n"
    ]).

create(Options) ->
    {ok, Vm} = evm:create([{timeout, ?BOOT} | Options]),
    Vm.

cmd(Vm, Command) ->
    {ok, _Status, Output} = evum:cmd(Vm, Command),
    Output.

%%% Tests

config_files(D) ->
    application:unset_env(evum, config),
    {ok, #{networks := Nets, images := Images}} = evum_config:read(),
    ?assertMatch(#{base_ip := <<"192.168.213.">>, first_ip := 92, gw := <<"192.168.213.1">>}, maps:get(home, Nets)),
    ?assertMatch(#{netmask := <<"255.255.248.0">>, ping := <<"10.200.22.24">>}, maps:get(library, Nets)),
    ?assertMatch(#{source := {debootstrap, <<"bookworm">>, undefined, []}}, maps:get(debian, Images)),
    %% The original evm.cfg.dist, as its README had users write it.
    use_config(D, "evm.cfg", [
        "{network, [{office, [{base_ip, \"10.9.8.\"}, {first_ip, 5}, {netmask, \"255.255.255.0\"},\n"
        "    {gw, \"10.9.8.1\"}]}]}.\n"
        "{image, [{openwrt, [{file, \"openwrt-x86-ext2.fs\"},\n"
        "    {uri, \"http://downloads.openwrt.org/backfire/10.03/x86/openwrt-x86-ext2.fs\"},\n"
        "    {md5, \"56d54230d71c6886428651bee25cfc0a\"},\n"
        "    {args, [{net, true}, {con, \"null\"}, {ssl, \"null\"}, {ssl, 0, \"fd:0,fd:1\"},\n"
        "        {init, \"/etc/preinit\"}, {mem, \"128M\"}]}]}]}.\n"
    ]),
    {ok, #{networks := Nets2, images := Images2}} = evum_config:read(),
    ?assertMatch(#{base_ip := <<"10.9.8.">>, first_ip := 5}, maps:get(office, Nets2)),
    %% Entries the user's file does not name stay as shipped.
    ?assertEqual(maps:get(library, Nets), maps:get(library, Nets2)),
    ?assertEqual(
        #{
            source =>
                {download, <<"openwrt-x86-ext2.fs">>,
                    <<"http://downloads.openwrt.org/backfire/10.03/x86/openwrt-x86-ext2.fs">>,
                    {md5, <<"56d54230d71c6886428651bee25cfc0a">>}},
            %% console and serial lines stay evum's; init is the console's program
            args => [<<"mem=128M">>],
            net => true,
            init => <<"/etc/preinit">>,
            size => undefined
        },
        maps:get(openwrt, Images2)
    ),
    %% The networks of a user's file are what evm:create's {net, Name} uses.
    {ok, Vm} = evm:create([{net, office}, {timeout, ?BOOT}]),
    ?assertMatch(<<"inet addr:10.9.8.5", _/binary>>, string:trim(cmd(Vm, "ifconfig eth0 | grep -o 'inet addr:[0-9.]*'"))),
    ok = evm:stop(Vm).

bad_config(D) ->
    Toml = use_config(D, "bad.toml", "[network.home]\nbase_ip = \"10.0.0.\"\nfirst_ip = \"ninety\"\n"),
    {error, {config, File, Key, Message}} = evum_config:read(),
    ?assertEqual({list_to_binary(Toml), <<"network.home.first_ip">>}, {File, Key}),
    ?assertMatch({_, _}, binary:match(Message, <<"expected u8">>)),
    %% The same error comes from evm:create of a dist the config would name.
    ?assertMatch({error, {config, _, <<"network.home.first_ip">>, _}}, evm:create([{dist, openwrt}])),
    Cfg = use_config(D, "bad.cfg", "{image, [{x, [{file, \"a\"}, {md5, \"short\"}]}]}.\n"),
    ?assertMatch({error, {config, _, <<"image.x.md5">>, <<"expected 32 hex digits", _/binary>>}}, evum_config:read()),
    {error, {config, CfgFile, _, _}} = evum_config:read(),
    ?assertEqual(list_to_binary(Cfg), CfgFile),
    use_config(D, "syntax.cfg", "{image, [}.\n"),
    ?assertMatch({error, {config, _, <<>>, <<"1: syntax error", _/binary>>}}, evum_config:read()),
    application:set_env(evum, config, "/nonexistent/evm.toml"),
    ?assertMatch({error, {config, <<"/nonexistent/evm.toml">>, <<>>, <<"cannot read", _/binary>>}}, evum_config:read()).

download(D = {Dir, _}) ->
    {ok, Gz} = file:read_file(filename:join(Dir, "base.ext4.gz")),
    Server = http_server(Gz, []),
    use_config(D, "net.toml", [
        "[image.net]\nuri = \"", url(Server, "/images/base.ext4.gz"), "\"\nsha256 = \"", sha256(Gz), "\"\n"
    ]),
    Self = self(),
    {ok, Path} = evm:fetch(net, fun(P) -> Self ! {progress, P} end),
    %% Kept unpacked, under the name without .gz, in the cache's images.
    ?assertEqual(filename:join([Dir, "cache", "images", "base.ext4"]), binary_to_list(Path)),
    {ok, Unpacked} = file:read_file(filename:join(Dir, "base.ext4")),
    ?assertEqual({ok, Unpacked}, file:read_file(Path)),
    Steps = [step(P) || {progress, P} <- receive_all()],
    ?assertEqual([started, bytes, verifying, unpacking], dedup(Steps)),
    %% Booting it needs no second download.
    Vm = create([{dist, net}]),
    ?assertEqual(<<"from the base image\n">>, cmd(Vm, "cat /root/base.txt")),
    ok = evm:stop(Vm),
    ?assertEqual(1, length(requests(Server))).

wrong_checksum(D = {Dir, _}) ->
    {ok, Gz} = file:read_file(filename:join(Dir, "base.ext4.gz")),
    Server = http_server(Gz, []),
    use_config(D, "wrong.toml", [
        "[image.wrong]\nfile = \"wrong.ext4\"\nuri = \"", url(Server, "/base.ext4.gz"), "\"\nsha256 = \"",
        sha256(<<"something else">>), "\"\n"
    ]),
    {error, {fetch, _, Why}} = evm:fetch(wrong),
    ?assertMatch({_, _}, binary:match(Why, <<"checksum mismatch">>)),
    Images = filename:join([Dir, "cache", "images"]),
    {ok, Left} = file:list_dir(Images),
    ?assertEqual([], [F || F <- Left, lists:prefix("wrong.ext4", F), F =/= "wrong.ext4.lock"]),
    ?assertMatch({error, {fetch, _, _}}, evm:create([{dist, wrong}])).

resumed_download(D = {Dir, _}) ->
    {ok, Gz} = file:read_file(filename:join(Dir, "base.ext4.gz")),
    Cut = byte_size(Gz) div 2,
    Server = http_server(Gz, [{cut_first_at, Cut}]),
    use_config(D, "cut.toml", [
        "[image.cut]\nfile = \"cut.ext4\"\nuri = \"", url(Server, "/base.ext4.gz"), "\"\nsha256 = \"", sha256(Gz), "\"\n"
    ]),
    {error, {fetch, _, Why}} = evm:fetch(cut),
    ?assertMatch({_, _}, binary:match(Why, <<"cut short">>)),
    Images = filename:join([Dir, "cache", "images"]),
    ?assertNot(filelib:is_file(filename:join(Images, "cut.ext4"))),
    {ok, Path} = evm:fetch(cut),
    {ok, Unpacked} = file:read_file(filename:join(Dir, "base.ext4")),
    ?assertEqual({ok, Unpacked}, file:read_file(Path)),
    %% The second request asked only for the rest.
    ?assertEqual([undefined, <<"bytes=", (integer_to_binary(Cut))/binary, "-">>], requests(Server)).

copy_on_write(D) ->
    tiny_config(D),
    A = create([{label, cow_a}, {dist, tiny}]),
    B = create([{label, cow_b}, {dist, tiny}]),
    <<>> = cmd(A, "echo a > /root/a.txt"),
    <<>> = cmd(B, "echo b > /root/b.txt"),
    ?assertEqual(<<"a.txt\nbase.txt\n">>, cmd(A, "ls /root")),
    ?assertEqual(<<"b.txt\nbase.txt\n">>, cmd(B, "ls /root")),
    [ok = evm:stop(Vm) || Vm <- [A, B]],
    %% The base image itself is unchanged.
    C = create([{dist, tiny}]),
    ?assertEqual(<<"base.txt\n">>, cmd(C, "ls /root")),
    ok = evm:stop(C),
    [ok = evm:destroy(L) || L <- [cow_a, cow_b]].

persistence(D = {Dir, _}) ->
    tiny_config(D),
    A = create([{label, keep}, {dist, tiny}]),
    <<>> = cmd(A, "echo kept > /root/state.txt"),
    ?assertEqual({error, {running, keep}}, evm:destroy(keep)),
    Cow = filename:join([Dir, "state", "disks", "keep", "tiny.cow"]),
    %% Readable by no one else; lent to the VM's own host user while it
    %% runs (when evum is root), given back after.
    #{os_pid := OsPid} = evum:info(A),
    {ok, #file_info{uid = VmUid}} = file:read_file_info("/proc/" ++ integer_to_list(OsPid)),
    ?assertMatch({ok, #file_info{uid = VmUid, mode = Mode}} when Mode band 8#077 =:= 0, file:read_file_info(Cow)),
    ok = evm:stop(A),
    Evum = evum_nif:effective_uid(),
    ?assertMatch({ok, #file_info{uid = Evum}}, file:read_file_info(Cow)),
    ?assert(filelib:is_regular(Cow)),
    %% A disk a dead BEAM left lent is taken back when evum starts.
    case evum_nif:effective_uid() of
        0 ->
            {ok, {First, Count}} = application:get_env(evum, vm_ids),
            ok = file:change_owner(Cow, First + Count - 1, First + Count - 1),
            ok = evum_disk:reclaim({First, Count}),
            ?assertMatch({ok, #file_info{uid = 0, gid = 0}}, file:read_file_info(Cow));
        _ ->
            ok
    end,
    A2 = create([{label, keep}, {dist, tiny}]),
    ?assertEqual(<<"kept\n">>, cmd(A2, "cat /root/state.txt")),
    ok = evm:stop(A2),
    ok = evm:destroy(keep),
    ?assertNot(filelib:is_file(Cow)),
    ?assertEqual({error, {not_found, keep}}, evm:destroy(keep)),
    A3 = create([{label, keep}, {dist, tiny}]),
    ?assertEqual(<<"base.txt\n">>, cmd(A3, "ls /root")),
    ok = evm:stop(A3),
    ok = evm:destroy(keep).

disk_in_use(D = {Dir, _}) ->
    Config = tiny_config(D),
    A = create([{label, shared}, {dist, tiny}]),
    %% Another BEAM with the same settings boots the same label.
    {ok, Peer, _Node} = peer:start_link(#{connection => standard_io, args => ["-pa" | code:get_path()]}),
    try
        Env = [
            {config, Config},
            {cache_dir, filename:join(Dir, "cache")},
            {state_dir, filename:join(Dir, "state")},
            {kernel, application:get_env(evum, kernel, evum)}
        ],
        peer:call(Peer, application, load, [evum]),
        [ok = peer:call(Peer, application, set_env, [evum, K, V]) || {K, V} <- Env],
        #{os_pid := OsPid} = evum:info(A),
        Cow = list_to_binary(filename:join([Dir, "state", "disks", "shared", "tiny.cow"])),
        ?assertEqual(
            {error, {disk_in_use, Cow, OsPid}},
            peer:call(Peer, evm, create, [[{label, shared}, {dist, tiny}, {timeout, ?BOOT}]], 60000)
        )
    after
        peer:stop(Peer)
    end,
    ok = evm:stop(A),
    ok = evm:destroy(shared).

dir_image(D = {Dir, _}) ->
    use_config(D, "dir.toml", ["[image.tree]\ndir = \"", filename:join(Dir, "tree"), "\"\n"]),
    Vm = create([{dist, tree}, {init_cmd, "echo started by init_cmd; exec sleep 600"}]),
    ?assertEqual(<<"from the base image\n">>, cmd(Vm, "cat /root/base.txt")),
    ?assertMatch({ok, 1, <<"touch: /root/new: Read-only file system\n">>}, evum:cmd(Vm, "touch /root/new")),
    ?assertNot(filelib:is_file(filename:join([Dir, "tree", "root", "new"]))),
    ?assert(lists:member(<<"started by init_cmd">>, receive_all())),
    ok = evm:stop(Vm).

errors(D) ->
    tiny_config(D),
    ?assertEqual({error, {unknown_dist, nope}}, evm:create([{dist, nope}])),
    ?assertEqual({error, {unknown_dist, nope}}, evm:fetch(nope)),
    ?assertEqual({error, {bad_option, {colour, blue}}}, evm:create([{dist, tiny}, {colour, blue}])),
    ?assertEqual({error, {bad_option, {label, 42}}}, evm:destroy(42)),
    %% Options given by the user win over an image's own.
    use_config(D, "mem.toml", [
        "[image.tiny]\nfrom_dir = \"", filename:join(element(1, D), "tree"), "\"\nsize = \"32M\"\nargs = [\"mem=96M\"]\n"
    ]),
    %% (7.x keeps the parameters UML itself takes, mem= among them, out of
    %% /proc/cmdline: the guest's memory tells.)
    Vm = create([{dist, tiny}]),
    ?assert(is_between(mem_total_mb(Vm), 80, 96)),
    ok = evm:stop(Vm),
    Vm2 = create([{dist, tiny}, {mem, 80}]),
    ?assert(is_between(mem_total_mb(Vm2), 64, 80)),
    ok = evm:stop(Vm2).

%% The guest's MemTotal: its `mem' less what the kernel keeps for itself.
mem_total_mb(Vm) ->
    {match, [Kb]} = re:run(cmd(Vm, "cat /proc/meminfo"), "MemTotal: *([0-9]+) kB", [{capture, all_but_first, list}]),
    list_to_integer(Kb) div 1024.

is_between(X, Low, High) -> X > Low andalso X =< High.

extra_disk({Dir, _}) ->
    Disk = filename:join(Dir, "extra.ext4"),
    {ok, _} = file:copy(filename:join(Dir, "base.ext4"), Disk),
    Vm = create([{disk, 1, Disk}, {hostname, "disks"}]),
    ?assertEqual(
        {ok, 0, <<"from the base image\n">>},
        evum:cmd(Vm, "mkdir -p /mnt/x && mount /dev/ubdb /mnt/x && cat /mnt/x/root/base.txt && umount /mnt/x")
    ),
    ?assertEqual({ok, 0, <<"disks\n">>}, evum:cmd(Vm, "hostname")),
    ok = evm:stop(Vm).

read_only_disks({Dir, _}) ->
    Disk = filename:join(Dir, "read-only.ext4"),
    {ok, _} = file:copy(filename:join(Dir, "base.ext4"), Disk),
    {ok, Before} = file:read_file(Disk),
    Vm = create([{disk, 1, Disk, read_only}, {hostname, "ro"}]),
    %% Readable; not writable as a mount, nor as a block device, nor
    %% remounted read-write. The host's file keeps every byte.
    ?assertEqual(
        {ok, 0, <<"from the base image\n">>},
        evum:cmd(Vm, "mkdir -p /mnt/x && mount -o ro /dev/ubdb /mnt/x && cat /mnt/x/root/base.txt")
    ),
    Attacks = [
        "mount -o remount,rw /mnt/x",
        "dd if=/dev/zero of=/dev/ubdb bs=4096 count=16 conv=fsync",
        "mount -o remount,rw /lib/busybox",
        "dd if=/dev/zero of=/dev/ubdp bs=4096 count=16 conv=fsync",
        "rm /lib/busybox/busybox"
    ],
    [?assertMatch({ok, Status, _} when Status =/= 0, evum:cmd(Vm, A ++ " 2>&1")) || A <- Attacks],
    %% The guest still runs busybox, read from an unchanged disk.
    ?assertEqual({ok, 0, <<"ro\n">>}, evum:cmd(Vm, "echo 3 > /proc/sys/vm/drop_caches; hostname")),
    ok = evm:stop(Vm),
    ?assertEqual({ok, Before}, file:read_file(Disk)),
    {ok, #{initramfs := Initramfs, disk := Busybox}} = evum_dist:busybox_image(),
    ?assert(filelib:is_regular(Initramfs)),
    {ok, BusyboxDisk} = file:read_file(Busybox),
    Vm2 = create([{hostname, "ro2"}]),
    ?assertMatch({ok, Status, _} when Status =/= 0, evum:cmd(Vm2, "dd if=/dev/zero of=/dev/ubdp bs=4096 count=16 conv=fsync 2>&1")),
    ok = evm:stop(Vm2),
    ?assertEqual({ok, BusyboxDisk}, file:read_file(Busybox)),
    %% Disk 15 is the busybox disk's: a user's is refused, by name.
    ?assertEqual(
        {error, {bad_option, <<"option ubd15 is given twice">>}},
        evm:create([{disk, 15, Disk}])
    ).

debian(_D) ->
    application:unset_env(evum, config),
    Self = self(),
    {ok, Image} = evm:fetch(debian, fun(P) -> Self ! {progress, P} end),
    ?assertEqual(
        [{building, <<"debian.ext4">>}, {building, <<"debootstrap bookworm">>}, {building, <<"mke2fs">>}],
        [P || {progress, P} <- receive_all()]
    ),
    ?assert(filelib:is_regular(Image)),
    Vm = create([{label, deb}, {dist, debian}]),
    ?assertMatch(<<"12.", _/binary>>, cmd(Vm, "cat /etc/debian_version")),
    %% Commands run in the image's own shell and tools.
    ?assertEqual({ok, 0, <<"dash\n">>}, evum:cmd(Vm, "readlink /proc/$$/exe | xargs basename")),
    ?assertMatch({ok, 0, <<"ls (GNU coreutils)", _/binary>>}, evum:cmd(Vm, "ls --version")),
    ?assertEqual({ok, 0, <<>>}, evum:cmd(Vm, "test -x /usr/bin/apt-get")),
    %% A minimal Debian has no net-tools or iputils: busybox's stand in.
    ?assertEqual(
        {ok, 0, <<"/usr/local/sbin/ifconfig\n/usr/local/sbin/route\n/usr/local/sbin/ping\n">>},
        evum:cmd(Vm, "for tool in ifconfig route ping; do command -v $tool; done")
    ),
    ok = evm:stop(Vm),
    ok = evm:destroy(deb).

%%% Helpers

receive_all() ->
    receive
        M -> [M | receive_all()]
    after 300 -> []
    end.

dedup([X, X | Rest]) -> dedup([X | Rest]);
dedup([X | Rest]) -> [X | dedup(Rest)];
dedup([]) -> [].

step({Step, _, _}) -> Step;
step(Step) -> Step.

sha256(Data) ->
    string:lowercase(binary:encode_hex(crypto:hash(sha256, Data))).

url({_Pid, Port}, Path) ->
    ["http://127.0.0.1:", integer_to_list(Port), Path].

%% The Range header (or undefined) of each request the server answered.
requests({Pid, _}) ->
    Pid ! {requests, self()},
    receive
        {requests, Rs} -> lists:reverse(Rs)
    after 5000 -> error(server_gone)
    end.

%% An HTTP/1.1 server on 127.0.0.1 serving Body at any path, one request
%% per connection, honouring `Range: bytes=N-'. With `{cut_first_at, N}'
%% the first response promises the whole body but closes after N bytes.
http_server(Body, Options) ->
    {ok, Listen} = gen_tcp:listen(0, [binary, {ip, {127, 0, 0, 1}}, {active, false}, {packet, http_bin}, {reuseaddr, true}]),
    {ok, Port} = inet:port(Listen),
    Pid = spawn_link(fun() -> serve(Listen, Body, proplists:get_value(cut_first_at, Options), []) end),
    ok = gen_tcp:controlling_process(Listen, Pid),
    {Pid, Port}.

serve(Listen, Body, Cut, Seen) ->
    case gen_tcp:accept(Listen, 100) of
        {ok, Socket} ->
            Range = read_request(Socket, undefined),
            From =
                case Range of
                    <<"bytes=", Rest/binary>> -> binary_to_integer(hd(binary:split(Rest, <<"-">>)));
                    undefined -> 0
                end,
            Part = binary:part(Body, From, byte_size(Body) - From),
            Status =
                case From of
                    0 -> <<"200 OK">>;
                    _ -> [<<"206 Partial Content\r\nContent-Range: bytes ">>, integer_to_binary(From), "-",
                          integer_to_binary(byte_size(Body) - 1), "/", integer_to_binary(byte_size(Body))]
                end,
            Header = [<<"HTTP/1.1 ">>, Status, <<"\r\nContent-Length: ">>, integer_to_binary(byte_size(Part)),
                      <<"\r\nConnection: close\r\n\r\n">>],
            Sent =
                case Cut of
                    undefined -> Part;
                    N -> binary:part(Part, 0, N)
                end,
            gen_tcp:send(Socket, [Header, Sent]),
            gen_tcp:close(Socket),
            serve(Listen, Body, undefined, [Range | Seen]);
        {error, timeout} ->
            receive
                {requests, To} -> To ! {requests, Seen}
            after 0 -> ok
            end,
            serve(Listen, Body, Cut, Seen)
    end.

read_request(Socket, Range) ->
    case gen_tcp:recv(Socket, 0, 5000) of
        {ok, {http_request, _, _, _}} -> read_request(Socket, Range);
        {ok, {http_header, _, 'Range', _, Value}} -> read_request(Socket, Value);
        {ok, {http_header, _, _, _, _}} -> read_request(Socket, Range);
        {ok, http_eoh} -> Range;
        {error, _} -> Range
    end.
