%% The jail, tried as an attacker would: every VM's UML process is a host
%% user of its own with no capabilities, in a mount namespace of its own in
%% which the host is read-only; another local user reaches no switch,
%% mconsole, file or process of evum's; a daemon request cannot point the
%% switch at someone else's socket; what a guest may write on the host is
%% bounded. Needs root (CI runs as root); says so and passes otherwise.
-module(evum_jail_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

-define(BOOT, 60000).
%% Debian's unprivileged user.
-define(OTHER_USER, "65534").

jail_test_() ->
    {setup, fun setup/0, fun cleanup/1, [
        {timeout, 120, {T, fun() -> as_root(F) end}}
     || {T, F} <- [
            {"every dist's UML process is a user of its own, without capabilities, the host read-only", identity},
            {"another local user reaches no switch, mconsole, VM file or UML process", other_user},
            {"a daemon request naming another's socket is refused and counted; forwarding goes on",
                foreign_address},
            {"a guest that writes without end into its runtime directory or /dev/shm stops at the limit",
                bounded_writes},
            {"under an ordinary user, a VM is walled off in a user namespace of its own", ordinary_user}
        ]
    ]}.

setup() ->
    {ok, _} = application:ensure_all_started(evum),
    ok.

cleanup(_) ->
    ok.

as_root(Case) ->
    case evum_nif:effective_uid() of
        0 -> ?MODULE:Case();
        _ -> io:format(user, "~nskipped: the jail needs evum to run as root~n", [])
    end.

%%% Helpers

create(Options) ->
    {ok, Vm} = evm:create([{timeout, ?BOOT} | Options]),
    Vm.

os_pid(Vm) ->
    #{os_pid := Pid} = evum:info(Vm),
    integer_to_list(Pid).

%% A field of /proc/<pid>/status, as its words.
status(Pid, Field) ->
    {ok, Status} = file:read_file("/proc/" ++ Pid ++ "/status"),
    [Line] = [L || L <- binary:split(Status, <<"\n">>, [global]), binary:match(L, <<Field/binary, ":">>) =:= {0, byte_size(Field) + 1}],
    tl(string:lexemes(binary_to_list(Line), " \t")).

%% Runs a shell command; its exit status and output.
shell(Command) ->
    evum_kernel_tests:run("sh", ["-c", lists:flatten(Command)]).

%% Runs a command as the VM's user in the VM's mount namespace: what the
%% UML process itself could do, had a guest taken it over.
as_vm(Pid, Command) ->
    [Uid | _] = status(Pid, <<"Uid">>),
    [Gid | _] = status(Pid, <<"Gid">>),
    shell(io_lib:format("nsenter -t ~s -m -S ~s -G ~s -- sh -c '~s'", [Pid, Uid, Gid, Command])).

%% Runs a command as another local user.
as_other_user(Command) ->
    shell(
        "setpriv --reuid=" ++ ?OTHER_USER ++ " --regid=" ++ ?OTHER_USER ++ " --clear-groups -- " ++ Command
    ).

%% Whether the real mconsole client gets the guest's answer (it warns
%% first that the path is no umid).
answers(Mconsole) ->
    {_, Output} = shell("uml_mconsole " ++ binary_to_list(Mconsole) ++ " version"),
    binary:match(Output, <<"OK Linux">>) =/= nomatch.

refused({Status, Output}) ->
    Status =/= 0 andalso
        (binary:match(Output, [<<"Permission denied">>, <<"Operation not permitted">>]) =/= nomatch).

%%% Cases

identity() ->
    {ok, Switch} = evum_switch:start(),
    Vms = [
        create([{switch, Switch}]),
        create([{switch, Switch}]),
        create([{dist, host}, {switch, Switch}])
    ],
    try
        Pids = [os_pid(Vm) || Vm <- Vms],
        Uids = [hd(status(Pid, <<"Uid">>)) || Pid <- Pids],
        ?assertEqual(length(Uids), length(lists:usort(Uids))),
        {ok, Own} = file:read_link("/proc/self/ns/mnt"),
        lists:foreach(
            fun({Vm, Pid}) ->
                ?assertEqual(1, length(lists:usort(status(Pid, <<"Uid">>)))),
                [Uid | _] = status(Pid, <<"Uid">>),
                ?assertNotEqual("0", Uid),
                ?assertEqual(["0000000000000000"], status(Pid, <<"CapEff">>)),
                ?assertEqual(["1"], status(Pid, <<"NoNewPrivs">>)),
                %% Its groups: its own and its switch's, no other.
                ?assertEqual([integer_to_list(evum_switch:group(Switch))], status(Pid, <<"Groups">>)),
                {ok, Ns} = file:read_link("/proc/" ++ Pid ++ "/ns/mnt"),
                ?assertNotEqual(Own, Ns),
                %% The host is read-only to it, world-writable places too;
                %% its runtime directory is not.
                #{runtime_dir := Dir} = evum:info(Vm),
                Probe = "evum-jail-probe-" ++ Pid,
                [
                    ?assertMatch({S, _} when S =/= 0, as_vm(Pid, "touch " ++ Path))
                 || Path <- ["/tmp/" ++ Probe, "/var/tmp/" ++ Probe, "/root/" ++ Probe, "/dev/shm/../" ++ Probe]
                ],
                ?assertNot(filelib:is_file("/tmp/" ++ Probe)),
                ?assertNot(filelib:is_file("/var/tmp/" ++ Probe)),
                ?assertMatch({0, _}, as_vm(Pid, "touch " ++ binary_to_list(Dir) ++ "/" ++ Probe)),
                %% ... and what it writes there stays in its namespace.
                ?assertNot(filelib:is_file(filename:join(Dir, Probe)))
            end,
            lists:zip(Vms, Pids)
        ),
        %% Every VM still answers: nothing above hurt them.
        [?assertEqual({ok, 0, <<"up\n">>}, evum:cmd(Vm, "echo up")) || Vm <- Vms]
    after
        [evm:stop(Vm) || Vm <- Vms],
        evum_switch:stop(Switch)
    end.

other_user() ->
    {ok, Switch} = evum_switch:start(),
    Vm = create([{switch, Switch}]),
    try
        Pid = os_pid(Vm),
        #{runtime_dir := Dir, mconsole_socket := Mconsole} = evum:info(Vm),
        %% evum itself reaches the mconsole, with the real client.
        ?assert(answers(Mconsole)),
        Attempts = [
            "uml_mconsole " ++ binary_to_list(Mconsole) ++ " version",
            "uml_mconsole " ++ binary_to_list(evum_switch:control_socket(Switch)) ++ " version",
            "uml_mconsole " ++ binary_to_list(evum_switch:bess_socket(Switch)) ++ " version",
            "ls " ++ binary_to_list(Dir),
            "ls " ++ filename:dirname(binary_to_list(evum_switch:bess_socket(Switch))),
            "ls /run/evum/ids",
            "kill -0 " ++ Pid,
            "cat /proc/" ++ Pid ++ "/environ"
        ],
        [?assert(refused(as_other_user(A)), A) || A <- Attempts],
        {ok, #{foreign_peer := 0}} = evum_switch:counters(Switch),
        ?assertEqual({ok, 0, <<"up\n">>}, evum:cmd(Vm, "echo up"))
    after
        evm:stop(Vm),
        evum_switch:stop(Switch)
    end.

%% A request for a daemon port whose data address is a path: the socket
%% there must be the requester's own (here evum's user, root).
daemon_request(Switch, Path) ->
    Ctl = binary_to_list(evum_switch:control_socket(Switch)),
    {ok, Sock} = gen_tcp:connect({local, Ctl}, 0, [local, binary, {active, false}]),
    Name = iolist_to_binary(Path),
    Pad = 108 - byte_size(Name),
    Addr = <<1:16/native, Name/binary, 0:(Pad * 8)>>,
    ok = gen_tcp:send(Sock, <<16#feedface:32/native, 3:32/native, 0:32/native, Addr/binary, 0:16>>),
    Answer = gen_tcp:recv(Sock, 0, 5000),
    gen_tcp:close(Sock),
    Answer.

foreign_address() ->
    {ok, Switch} = evum_switch:start(),
    [A, B] = [create([{switch, Switch}]) || _ <- [1, 2]],
    try
        #{mconsole_socket := Mconsole} = evum:info(A),
        ?assertEqual({error, closed}, daemon_request(Switch, Mconsole)),
        ?assertEqual({error, closed}, daemon_request(Switch, "/etc/passwd")),
        {ok, Counters} = evum_switch:counters(Switch),
        ?assertMatch(#{foreign_address := 2, bad_address := 0}, Counters),
        %% The mconsole got nothing and still answers.
        ?assert(answers(Mconsole)),
        {ok, 0, _} = evum:cmd(A, "ifconfig eth0 10.9.0.1 up"),
        {ok, 0, _} = evum:cmd(B, "ifconfig eth0 10.9.0.2 up"),
        ?assertMatch({ok, 0, _}, evum:cmd(B, "ping -c 2 -W 2 10.9.0.1"))
    after
        [evm:stop(Vm) || Vm <- [A, B]],
        evum_switch:stop(Switch)
    end.

%% The host dist's guest may mount any host directory over hostfs: its
%% runtime directory and /dev/shm are the writable ones, each a tmpfs of the
%% VM's own with a size limit. Its memory file is in neither: the VM lives
%% on when they are full.
bounded_writes() ->
    Vm = create([{dist, host}]),
    try
        #{runtime_dir := Dir} = evum:info(Vm),
        Fill = fun(HostDir) ->
            Mount = "mkdir -p /tmp/m && mount -t hostfs -o " ++ HostDir ++ " none /tmp/m",
            {ok, 0, _} = evum:cmd(Vm, Mount),
            {ok, Status, Output} = evum:cmd(Vm, "dd if=/dev/zero of=/tmp/m/fill bs=1M count=512 2>&1"),
            %% While the host directory is full, the guest touches 32 MB
            %% of memory it had not used: its memory file is elsewhere.
            {ok, 0, _} = evum:cmd(Vm, "dd if=/dev/zero of=/dev/null bs=32M count=1"),
            {ok, 0, Size} = evum:cmd(Vm, "du -m /tmp/m/fill | cut -f1; rm /tmp/m/fill; umount /tmp/m"),
            {Status, Output, list_to_integer(string:trim(binary_to_list(Size)))}
        end,
        {RunStatus, RunOutput, RunMb} = Fill(binary_to_list(Dir)),
        ?assertNotEqual(0, RunStatus),
        ?assertNotEqual(nomatch, binary:match(RunOutput, <<"No space left">>)),
        ?assert(RunMb =< 16),
        {ShmStatus, ShmOutput, ShmMb} = Fill("/dev/shm"),
        ?assertNotEqual(0, ShmStatus),
        ?assertNotEqual(nomatch, binary:match(ShmOutput, <<"No space left">>)),
        ?assert(ShmMb =< 64),
        ?assertEqual({ok, 0, <<"up\n">>}, evum:cmd(Vm, "echo up"))
    after
        evm:stop(Vm)
    end.

%% A BEAM run as the unprivileged user boots a `host' VM: the UML process
%% is that user, in user and mount namespaces of its own, without
%% capabilities, and its guest cannot write the host files that user owns.
ordinary_user() ->
    Home = "/tmp/evum-jail-user-" ++ os:getpid(),
    ok = filelib:ensure_path(Home),
    ok = file:change_owner(Home, list_to_integer(?OTHER_USER), list_to_integer(?OTHER_USER)),
    {ok, Kernel} = application:get_env(evum, kernel),
    KernelPath =
        case Kernel of
            evum -> {ok, P} = evum_kernel:ensure(), binary_to_list(P);
            _ -> Kernel
        end,
    Script = lists:flatten(io_lib:format(
        "application:load(evum),"
        "[application:set_env(evum, K, V) || {K, V} <- [{cache_dir, ~p}, {state_dir, ~p}, {kernel, ~p}]],"
        "{ok, _} = application:ensure_all_started(evum),"
        "{ok, Vm} = evm:create([{dist, host}]),"
        "#{os_pid := P} = evum:info(Vm),"
        "Status = os:cmd(\"grep -E '^(Uid|CapEff|NoNewPrivs)' /proc/\" ++ integer_to_list(P) ++ \"/status\"),"
        "Ns = [element(2, file:read_link(\"/proc/\" ++ Who ++ \"/ns/\" ++ N)) || Who <- [integer_to_list(P), \"self\"], N <- [\"user\", \"mnt\"]],"
        "Write = evum:cmd(Vm, \"busybox mount -t hostfs -o ~s none /mnt 2>&1 && echo x > /mnt/from-guest 2>&1\"),"
        "io:format(\"~~w.~~n\", [{Status, Ns, Write}]),"
        "evm:stop(Vm).",
        [Home ++ "/cache", Home ++ "/state", KernelPath, Home]
    )),
    Probe = filename:join(Home, "probe.escript"),
    ok = file:write_file(Probe, [
        "#!/usr/bin/env escript\n%%! -pa ", filename:dirname(code:which(evm)), "\nmain(_) -> ", Script, "\n"
    ]),
    {0, Out} = as_other_user("env HOME=" ++ Home ++ " XDG_RUNTIME_DIR= escript " ++ Probe),
    {ok, Tokens, _} = erl_scan:string(binary_to_list(lists:last(binary:split(string:trim(Out), <<"\n">>, [global])))),
    {ok, {Status, [VmUser, VmMnt, BeamUser, BeamMnt], {ok, _, Refusal}}} = erl_parse:parse_term(Tokens),
    ?assertNotEqual(nomatch, string:find(Status, "Uid:\t" ++ ?OTHER_USER)),
    ?assertNotEqual(nomatch, string:find(Status, "CapEff:\t0000000000000000")),
    ?assertNotEqual(nomatch, string:find(Status, "NoNewPrivs:\t1")),
    ?assertNotEqual(BeamUser, VmUser),
    ?assertNotEqual(BeamMnt, VmMnt),
    %% The user's own directory: writable to it, not to its guest, which
    %% mounts it over hostfs.
    ?assertNot(filelib:is_file(filename:join(Home, "from-guest"))),
    ?assertNotEqual(nomatch, binary:match(Refusal, <<"Read-only file system">>)),
    os:cmd("rm -rf " ++ Home).
