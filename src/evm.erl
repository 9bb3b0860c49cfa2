%% @doc Creating VMs by label and dist, as in the original evum README:
%%
%% ```
%% 1> {ok, Ref} = evm:create([{label, test1}]).
%% 2> flush().                      % the boot messages
%% 3> evum:send(Ref, "hostname").   % the echo of the command
%% 4> flush().                      % Shell got <<"evm">>, then the prompt
%% '''
-module(evm).

-export([create/1, start_link/1, child_spec/1, stop/1, fetch/1, fetch/2, destroy/1]).

-export_type([option/0, vm/0]).

-type vm() :: pid() | atom().
-type option() ::
    {label, atom() | string() | binary()}
    | {dist, evum_dist:name()}
    | {timeout, timeout()}
    | tagged
    | {tagged, boolean()}
    | {hostname, string() | binary()}
    | {kernel, evum | file:filename_all()}
    | {umid, string() | binary()}
    | {uml_dir, file:filename_all()}
    | {switch, evum_switch:switch()}
    | {transport, daemon | bess}
    | {net, atom()}
    | {location, atom()}
    | {init_cmd, string() | binary()}
    | {progress, evum_image:progress_fun()}
    | {console_backlog, pos_integer() | infinity}
    | {console_overflow, hold | drop}
    | {owner, pid() | atom() | none}
    | {overcommit, boolean()}
    | evum_opts:boot_option().

%% @doc As create/1, for a supervisor: the VM is linked to the caller, and
%% its console goes to `{owner, Pid | Name}' if given, nowhere otherwise
%% (`{owner, none}'), so that a supervisor is sent nothing. The VM stops
%% when the caller (the supervisor) tells it to, or exits, as any child
%% does. A VM whose guest ends exits with `normal' when the guest halted
%% cleanly and `{shutdown, How}' otherwise, and `killed' after `exit(Vm,
%% kill)': as OTP has it, a `permanent' child is restarted whatever its
%% end, a `transient' one only after an abnormal exit such as `killed'.
%% (evm:stop/1 ends a permanent child too, and it is restarted: stop it with
%% supervisor:terminate_child/2.) See child_spec/1.
-spec start_link([option()]) -> {ok, pid()} | {error, term()}.
start_link(Options) when is_list(Options) ->
    Owned =
        case lists:keymember(owner, 1, Options) of
            true -> Options;
            false -> [{owner, none} | Options]
        end,
    case create(Owned) of
        {ok, Vm} ->
            case catch gen_server:call(Vm, {link, self()}, infinity) of
                ok -> {ok, Vm};
                _ -> {error, not_running}
            end;
        Error ->
            Error
    end;
start_link(Options) ->
    {error, {bad_option, Options}}.

%% @doc A supervisor's child specification for a VM of these options
%% (start_link/1's): its id is the label (`evm' without one), `permanent',
%% with 15 s to stop (a guest's sync, halt and the signals after them).
%%
%% ```
%% Children = [evm:child_spec([{label, app_vm}, {owner, app_console}])],
%% supervisor:start_link(Sup, {#{strategy => one_for_one}, Children}).
%% '''
-spec child_spec([option()]) -> supervisor:child_spec().
child_spec(Options) when is_list(Options) ->
    #{
        id => proplists:get_value(label, Options, ?MODULE),
        start => {?MODULE, start_link, [Options]},
        restart => permanent,
        shutdown => 15000,
        type => worker,
        modules => [?MODULE, evum_vm]
    }.

%% @doc Boots a VM and waits until its guest is up. The caller becomes the
%% VM's owner (or the process `{owner, Pid}' names): it receives the console
%% lines and is told when the VM ends, and the VM stops when the owner
%% exits. A VM created from the Erlang shell belongs to the shell's
%% evaluator, which the shell replaces after an exception: the VM then goes
%% to the new evaluator instead of stopping. evum:give_away/2 hands a VM to
%% another process.
%%
%% Options: `label' (registers the VM's pid under that name, and names its
%% copy-on-write disk), `dist' (`busybox', the default, `host', or an image
%% of the configuration, see evum_config; made on first use), `timeout' (ms
%% to wait for the boot), `init_cmd' (a shell command the console runs
%% instead of a login shell; the VM halts when it exits), `progress' (a
%% fun called with the progress of a download or build of the image, or of
%% evum's kernel, see evum_kernel),
%% `tagged' (console lines as `{evum, Vm, {console, Line}}'),
%% `{console_backlog, N}' (while the owner has more than N messages waiting,
%% 10000 by default, evum stops reading the console and the guest's output
%% waits, as on a terminal nobody reads; `infinity': never),
%% `{console_overflow, hold | drop}' (what happens past that backlog:
%% `hold', the default, as just said; `drop', the console is read on and its
%% lines are thrown away and counted, so the guest never waits: evum:info/1
%% has the count as `console_dropped', and the owner gets `{evum, Vm,
%% {console_dropped, N}}' when lines flow again), `hostname',
%% `kernel' (`evum', the default: evum's own kernel, built on first use,
%% see evum_kernel; or the path of any UML binary), `umid', `uml_dir',
%% `switch' (eth0 on that evum_switch, its MAC derived from the label),
%% `{transport, bess | daemon}' (how eth0 reaches the switch: the vector
%% driver, the default, or the daemon transport of kernels up to 6.15, as
%% uml_switch speaks it), `{net, Name}' (or `{location,
%% Name}': eth0 on a named network of the `networks' setting, with the next
%% address from it), `{cpu, auto | any | N | [N]}' (the host CPUs the VM's
%% processes run on: one evum picks in turn, the default; anywhere, the
%% default with `{cpus, N > 1}'; or these; see README), `{nice, 0..19}' (the
%% priority of the VM's processes on the host, 19 by default: the BEAM
%% comes first; see README), `verbose' (the kernel's boot
%% log on the console), `{seccomp, true}' (the guest's processes run under a
%% seccomp filter instead of ptrace: faster system calls, but the kernel's
%% own help calls it insecure with an untrusted userspace, so for trusted
%% guests only), `{cpus, N}' (N virtual CPUs, 1 to 8; implies `{seccomp,
%% true}', as UML starts SMP only in seccomp mode), and the original boot
%% options (`mem', `con', `ssl', `disk', `ubd', `eth', `init', `initrd',
%% `root', `rootflags', `rootfstype', `write', `quiet', `hostfs', `append',
%% `env'). An option it does not know is `{error, {bad_option, Option}}',
%% as are `{cpus, N}' with `{seccomp, false}' (`{error, {bad_option,
%% {{cpus, N}, {seccomp, false}}}}'). `seccomp' and `cpus' need a kernel
%% that has them (evum's own; Debian's 6.1 has neither): on another, the
%% result is `{error, {unsupported_by_kernel, Kernel, seccomp | cpus}}',
%% before anything is started.
%%
%% Bounds, each `{error, {bad_option, Option}}' before anything starts:
%% `mem' (MB, or `"128M"'; 64 MB by default) from 20 MB to the host's
%% physical memory; a path of `disk', `ubd', `initrd', `hostfs', `uml_dir'
%% or `kernel' not empty, at most 4095 bytes (PATH_MAX) and without NUL,
%% and one of `disk', `ubd' (each file of its `COW,BASE') or `uml_dir'
%% without `,' or `:' (UML's device specs would cut it there); the
%% kernel's command line at most 4095 bytes (`{bad_option, Why}').
%%
%% What the host cannot give is named: `{error, {insufficient_memory,
%% #{asked => MB, available => MB}}}' when the `mem' of this node's running
%% VMs and this one's would pass the host's MemTotal less the `mem_reserve'
%% setting (1024 MB), unless `{overcommit, true}' (default `false'; a
%% guest takes memory only as it touches it); `{error, {system_limit,
%% open_files}}' when the BEAM has too few file descriptors left to start
%% a VM; `{error, {no_space, Path}}' when a file evum writes for the VM (a
%% label's copy-on-write disk, a cached image) finds its file system full.
%% Nothing of the VM is left when an error is returned.
%%
%% A guest that dies before it is up is `{error, {boot_failed, Exit,
%% Lines}}', with Exit as in `{evum, Vm, {exit, Exit}}' and Lines the
%% kernel's last console lines (at most 20, newest last), or `{error,
%% {unsupported_host, Problem, Fix}}' when those lines show a host
%% incompatibility evum knows (the lines then go to the logger).
-spec create([option()]) -> {ok, pid()} | {error, term()}.
create(Options) when is_list(Options) ->
    case application:ensure_all_started(evum) of
        {ok, _} -> create_vm(Options);
        {error, _} = Error -> Error
    end;
create(Options) ->
    {error, {bad_option, Options}}.

create_vm(Options) ->
    {Own, Boot} = lists:partition(fun is_create_option/1, Options),
    Get = fun(Key, Default) -> proplists:get_value(Key, Own, Default) end,
    {ok, DefaultTimeout} = application:get_env(evum, boot_timeout),
    DefaultKernel = application:get_env(evum, kernel, evum),
    %% {net, Name} (the original code's {location, Name}) is a named network:
    %% its switch, then an address from it once the guest is up.
    Net = Get(net, Get(location, undefined)),
    %% Each step adds to what the ones before found, or ends with an error.
    Steps = [
        fun(VM) -> with(label, label(Get(label, undefined)), VM) end,
        fun(VM) ->
            case Get(console_backlog, 10000) of
                N when is_integer(N), N > 0; N =:= infinity -> {ok, VM};
                Bad -> {error, {bad_option, {console_backlog, Bad}}}
            end
        end,
        fun(VM) -> with(owner, owner(Get(owner, self())), VM) end,
        fun(VM) ->
            case Get(console_overflow, hold) of
                Overflow when Overflow =:= hold; Overflow =:= drop -> {ok, VM};
                Bad -> {error, {bad_option, {console_overflow, Bad}}}
            end
        end,
        fun(VM) -> limits(Get, VM) end,
        fun(VM) -> with(switch, switch_of(Net, Get(switch, undefined)), VM) end,
        fun(#{label := Label} = VM) -> {ok, VM#{mac => mac_for(Label)}} end,
        fun(#{label := Label} = VM) ->
            Context = #{
                hostname => unicode:characters_to_binary(Get(hostname, "evm")),
                label => Label,
                init => maybe_bin(Get(init_cmd, undefined)),
                progress => Get(progress, fun(_) -> ok end)
            },
            with(dist, evum_dist:boot_options(Get(dist, busybox), Context), VM)
        end,
        fun(VM) ->
            Progress = Get(progress, fun(_) -> ok end),
            %% {cpus, N} boots evum's SMP flavour.
            Flavour =
                case proplists:is_defined(cpus, Boot) of
                    true -> smp;
                    false -> up
                end,
            case evum_kernel:resolve(Get(kernel, DefaultKernel), Progress, Flavour) of
                {ok, Kernel, KernelBoot} -> {ok, VM#{kernel => {Kernel, KernelBoot}}};
                Error -> Error
            end
        end,
        fun(#{label := Label, switch := Switch, mac := Mac, dist := DistBoot} = VM) ->
            #{kernel := {Kernel, KernelBoot}} = VM,
            Network = network(Switch, Get(transport, bess), Mac),
            Config = fun(NifBoot) ->
                #{
                    label => Label,
                    kernel => Kernel,
                    boot => NifBoot,
                    umid => bin(Get(umid, "")),
                    uml_dir => bin(Get(uml_dir, "")),
                    groups => switch_groups(Switch),
                    tagged => proplists:get_bool(tagged, Own),
                    console_backlog => Get(console_backlog, 10000),
                    console_overflow => Get(console_overflow, hold),
                    switch => Switch,
                    boot_timeout => Get(timeout, DefaultTimeout),
                    mem_mb => evum_opts:mem_mb(NifBoot),
                    overcommit => Get(overcommit, false)
                }
            end,
            case evum_opts:normalize(overridden(DistBoot, Boot) ++ KernelBoot ++ Network ++ Boot) of
                {ok, NifBoot} -> {ok, VM#{config => Config(NifBoot)}};
                Error -> Error
            end
        end,
        fun(#{config := Config, owner := Owner} = VM) -> with(pid, start(Owner, Config), VM) end,
        fun(#{pid := Pid} = VM) -> boot(Pid, VM) end,
        fun(#{pid := Pid, label := Label, mac := Mac} = VM) -> with(pid, join(Net, Label, Pid, Mac), VM) end,
        fun(#{pid := Pid, switch := Switch, mac := Mac} = VM) ->
            %% The switch names the VM as the peer of the port with its MAC.
            Switch =:= undefined orelse evum_switch:joined(Switch, Pid, Mac),
            {ok, VM}
        end
    ],
    case chain(Steps, #{}) of
        {ok, #{pid := Pid}} -> {ok, Pid};
        Error -> Error
    end.

%% Boots the VM's process. One that does not come up ends just after its
%% answer: waiting for that, the caller has its error when nothing of the
%% VM is left and its label is free again.
boot(Pid, VM) ->
    Monitor = erlang:monitor(process, Pid),
    case gen_server:call(Pid, boot, infinity) of
        ok ->
            erlang:demonitor(Monitor, [flush]),
            {ok, VM};
        Error ->
            receive
                {'DOWN', Monitor, process, Pid, _} -> Error
            end
    end.

%% What is checked before anything is made: the options that bound what a
%% VM takes of the host, and whether this node has the file descriptors a
%% VM's start needs (without them every step after would fail its own
%% way: an image not found, a kernel to build, a spawn's EMFILE).
limits(Get, VM) ->
    Checks = [
        {overcommit, fun is_boolean/1},
        {uml_dir, fun runtime_path/1}
    ],
    case [{Key, Value} || {Key, Good} <- Checks, Value <- [Get(Key, undefined)], not good(Good, Value)] of
        [Bad | _] ->
            {error, {bad_option, Bad}};
        [] ->
            case evum_nif:fd_headroom() of
                ok -> {ok, VM};
                {error, _} = Error -> Error
            end
    end.

good(_Check, undefined) -> true;
good(Check, Value) -> Check(Value).

%% A uml_dir lands in the kernel's ubd and vector device specs (a VM's own
%% disk and bess socket are `{runtime_dir}/...'), where `,' and `:'
%% separate fields: a path with either would be cut there.
runtime_path(Dir) ->
    try bin(Dir) of
        Path when is_binary(Path) -> evum_opts:path(Path) andalso binary:match(Path, [<<",">>, <<":">>]) =:= nomatch;
        _ -> false
    catch
        error:_ -> false
    end.

%% The process the console goes to: a live local process, by pid or
%% registered name, or `none' (the console's lines are dropped).
owner(none) ->
    {ok, none};
owner(Name) when is_atom(Name) ->
    case whereis(Name) of
        undefined -> {error, {bad_option, {owner, Name}}};
        Pid -> owner(Pid)
    end;
owner(Pid) when is_pid(Pid), node(Pid) =:= node() ->
    case is_process_alive(Pid) of
        true -> {ok, Pid};
        false -> {error, {bad_option, {owner, Pid}}}
    end;
owner(Other) ->
    {error, {bad_option, {owner, Other}}}.

with(Key, {ok, Value}, VM) -> {ok, VM#{Key => Value}};
with(_Key, Error, _VM) -> Error.

%% The groups the VM's host user joins: its switch's, whose sockets only
%% that group (and evum) may use.
switch_groups(undefined) ->
    [];
switch_groups(Switch) ->
    case evum_switch:group(Switch) of
        undefined -> [];
        Gid -> [Gid]
    end.

switch_of(undefined, undefined) ->
    {ok, undefined};
switch_of(undefined, Switch) ->
    case evum_switch:group(Switch) of
        {error, _} -> {error, {bad_option, {switch, Switch}}};
        _ -> {ok, Switch}
    end;
switch_of(Net, undefined) ->
    evum_net:switch(Net);
switch_of(Net, Switch) ->
    {error, {bad_option, {{net, Net}, {switch, Switch}}}}.

%% A MAC that stays the same for a label (locally administered: 02:ee:...),
%% so a guest keeps its address across restarts.
mac_for(Label) ->
    Id =
        case Label of
            undefined -> rand:uniform(1 bsl 32) - 1;
            _ -> erlang:phash2(Label, 1 bsl 32)
        end,
    <<2, 16#ee, Id:32>>.

%% Gives a booted VM its address on a named network, as the original did,
%% and binds it to the VM's MAC on the network's switch (ARP guard).
join(undefined, _Label, Pid, _Mac) ->
    {ok, Pid};
join(Net, Label, Pid, Mac) ->
    Key =
        case Label of
            undefined -> {vm, Pid};
            _ -> {label, Label}
        end,
    Configured =
        case evum_net:lease(Net, Key) of
            {ok, #{switch := Switch, address := Address, netmask := Mask, gateway := Gateway} = Lease} ->
                Resolver =
                    case Lease of
                        #{dns := Dns} -> [" && echo 'nameserver ", Dns, "' >/etc/resolv.conf"];
                        #{} -> []
                    end,
                Command = [
                    "ifconfig eth0 ", Address, " netmask ", Mask, " up && route add default gw ", Gateway | Resolver
                ],
                case evum_switch:bind(Switch, Address, Mac) of
                    ok -> evum:cmd(Pid, Command);
                    Error -> Error
                end;
            Error ->
                Error
        end,
    case Configured of
        {ok, 0, _} ->
            {ok, Pid};
        Failed ->
            stop(Pid),
            {error, {network, Net, Failed}}
    end.

%% Runs each step on the previous one's result while they return {ok, _}.
chain([], Result) ->
    {ok, Result};
chain([Step | Rest], Previous) ->
    case Step(Previous) of
        {ok, Result} -> chain(Rest, Result);
        Error -> Error
    end.

%% The VM's interface on a switch: over the vector driver's bess mode (the
%% default; every kernel evum runs has it, 7.x has nothing else), whose own
%% socket lives in the VM's runtime directory, or over the daemon transport
%% (what uml_switch speaks; kernels up to 6.15). evum's init names the
%% guest's interface eth0 either way.
network(undefined, _Transport, _Mac) ->
    [];
network(Switch, daemon, Mac) ->
    [evum_switch:eth_option(Switch, Mac)];
network(Switch, bess, Mac) ->
    [evum_switch:bess_option(Switch, Mac)];
network(_Switch, Other, _Mac) ->
    %% Not a transport: evum_opts names it as a bad option.
    [{transport, Other}].

start(Owner, Config) ->
    case evum_vm_sup:start_vm(Owner, Config) of
        {error, {already_started, _}} -> {error, {label_in_use, maps:get(label, Config)}};
        Other -> Other
    end.

is_create_option({Key, _}) ->
    lists:member(Key, [
        label,
        dist,
        timeout,
        tagged,
        hostname,
        kernel,
        umid,
        uml_dir,
        switch,
        transport,
        net,
        location,
        init_cmd,
        progress,
        console_backlog,
        console_overflow,
        owner,
        overcommit
    ]);
is_create_option(tagged) ->
    true;
is_create_option(_) ->
    false.

%% A label becomes an atom (the registered name): at most 255 characters,
%% an atom's limit, checked here rather than raised as system_limit.
label(undefined) ->
    {ok, undefined};
label(Label) when is_atom(Label) ->
    {ok, Label};
label(Label) when is_list(Label) ->
    case unicode:characters_to_binary(Label) of
        Bin when is_binary(Bin) -> label(Bin);
        _ -> {error, {bad_option, {label, Label}}}
    end;
label(Label) when is_binary(Label) ->
    case string:length(Label) of
        N when is_integer(N), N > 0, N =< 255 -> {ok, binary_to_atom(Label)};
        _ -> {error, {bad_option, {label, Label}}}
    end;
label(Label) ->
    {error, {bad_option, {label, Label}}}.

%% A dist's boot options but those the user gave (an image's mem, the
%% busybox root's file system type).
overridden(DistBoot, Boot) ->
    Given = [element(1, O) || O <- Boot, is_tuple(O)],
    Overridden = [K || K <- [mem, rootfstype], lists:member(K, Given)],
    [O || O <- DistBoot, not lists:member(element(1, O), Overridden)].

maybe_bin(undefined) -> undefined;
maybe_bin(Value) -> bin(Value).

bin(Value) when is_binary(Value) -> Value;
bin(Value) when is_atom(Value) -> atom_to_binary(Value);
bin(Value) -> unicode:characters_to_binary(Value).

%% @doc Makes a dist's base image ready ahead of its first boot: downloads
%% or builds it into the cache (progress goes to the logger).
-spec fetch(atom()) -> {ok, binary()} | {error, term()}.
fetch(Dist) ->
    fetch(Dist, fun(_) -> ok end).

%% @doc As fetch/1, calling `Progress' with each step of the way.
-spec fetch(atom(), evum_image:progress_fun()) -> {ok, binary()} | {error, term()}.
fetch(busybox, _Progress) ->
    with_app(fun() ->
        case evum_dist:busybox_image() of
            {ok, #{initramfs := Initramfs}} -> {ok, Initramfs};
            {error, _} = Error -> Error
        end
    end);
fetch(Dist, Progress) when is_atom(Dist), is_function(Progress, 1) ->
    with_app(fun() ->
        case evum_config:image(Dist) of
            {ok, Image} -> evum_image:base(Dist, Image, Progress);
            {error, _} = Error -> Error
        end
    end);
fetch(Dist, _Progress) when not is_atom(Dist) ->
    {error, {bad_option, {dist, Dist}}};
fetch(_Dist, Progress) ->
    {error, {bad_option, {progress, Progress}}}.

%% @doc Removes a label's copy-on-write disks: its next boot starts from the
%% base image again. `{error, {running, Label}}' while its VM runs.
-spec destroy(atom() | string() | binary()) -> ok | {error, term()}.
destroy(Label) ->
    case label(Label) of
        {ok, Name} when Name =/= undefined -> with_app(fun() -> evum_disk:destroy(Name) end);
        _ -> {error, {bad_option, {label, Label}}}
    end.

with_app(Fun) ->
    case application:ensure_all_started(evum) of
        {ok, _} -> Fun();
        {error, _} = Error -> Error
    end.

%% @doc Stops a VM: mconsole halt, then SIGTERM, then SIGKILL, waiting for
%% the guest to be gone at each step. Returns when nothing of it is left.
-spec stop(vm()) -> ok | {error, not_running | {not_a_vm, term()}}.
stop(Vm) when not is_pid(Vm), not is_atom(Vm) ->
    {error, {not_a_vm, Vm}};
stop(Vm) ->
    %% The VM's process replies once the guest is gone and exits just after:
    %% waiting for that exit too frees its label (evm:destroy/1 and a new
    %% VM of the same label may follow at once).
    Monitor = erlang:monitor(process, Vm),
    Result =
        try
            gen_server:call(Vm, stop, infinity)
        catch
            exit:{noproc, _} -> {error, not_running};
            exit:{normal, _} -> ok;
            exit:{{shutdown, _}, _} -> ok
        end,
    receive
        {'DOWN', Monitor, process, _, _} -> Result
    end.
