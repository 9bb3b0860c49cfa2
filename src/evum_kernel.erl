%% @doc evum's own UML kernel: a trimmed Linux 7.x built once per machine
%% from Debian's `linux-source' package (see native/evum_core/src/kernel and
%% priv/kernel/evum.config), and the default kernel of every VM.
%%
%% Debian's packaged UML (6.1) does not start on hosts with AMX and
%% corrupts guests' vector registers across signals on AVX-512 hosts; the
%% kernel evum builds sizes the FPU state from the host, has no loadable
%% modules, and boots in tens of milliseconds. It comes in two flavours
%% from one build: `linux', which every VM boots, and `linux-smp' beside it
%% for VMs of `{cpus, N}' (SMP costs every guest host CPU, used or not).
%% `make deps' builds them; so
%% does the first `evm:create/1' that needs it, reporting to its `progress'
%% fun and the logger:
%%
%% ```
%% {ok, Path} = evum_kernel:ensure(fun(P) -> io:format("~p~n", [P]) end).
%% '''
%%
%% The `kernel' application setting (and `evm:create/1''s `{kernel, K}')
%% is `evum' for this kernel, or the path of any UML binary (Debian's is
%% `linux'). The source package comes from the Debian mirror the machine's
%% apt sources name, or the `kernel_mirror' setting's.
-module(evum_kernel).

-export([path/0, ensure/0, ensure/1, lpj/0, resolve/2, resolve/3]).

-type progress() ::
    waiting
    | {updating, Suite :: binary()}
    | {downloading, Package :: binary(), Version :: binary(), Bytes :: non_neg_integer() | undefined}
    | {unpacking, Files :: non_neg_integer()}
    | configuring
    | {compiling, Done :: non_neg_integer(), Total :: non_neg_integer()}
    | calibrating.
-export_type([progress/0]).

%% @doc The path of evum's kernel if it is built, without building it.
-spec path() -> {ok, binary()} | {error, not_built}.
path() ->
    case evum_nif:kernel_cached(cache_dir()) of
        {ok, Path} -> {ok, Path};
        not_built -> {error, not_built}
    end.

%% @doc evum's kernel, built first if need be (progress to the logger).
-spec ensure() -> {ok, binary()} | {error, term()}.
ensure() ->
    ensure(fun(_) -> ok end).

%% @doc As ensure/0, calling `Progress' with each step of a build. A build
%% takes a few minutes (a download of about 160 MB, then a compile on every
%% core); two at once, from this node or another program, build once.
-spec ensure(fun((progress()) -> any())) -> {ok, binary()} | {error, term()}.
ensure(Progress) when is_function(Progress, 1) ->
    %% A kernel built on another host of the same cache has no delay-loop
    %% figure for this one yet: the native side measures it.
    case {path(), lpj()} of
        {{ok, Path}, Lpj} when Lpj =/= undefined ->
            {ok, Path};
        _ ->
            Ref = make_ref(),
            case evum_nif:kernel_build(cache_dir(), mirror(), self(), Ref) of
                ok -> wait_build(Ref, Progress, undefined);
                {error, Why} -> {error, {kernel_build, Why}}
            end
    end.

%% @doc The delay-loop figure (`lpj=') measured on this host when the
%% kernel was built (or first ensured here), or `undefined'.
-spec lpj() -> pos_integer() | undefined.
lpj() ->
    evum_nif:kernel_lpj(cache_dir()).

%% @doc The kernel binary a `kernel' setting names, with the boot options it
%% wants: `evum' is evum's kernel (built if need be); anything else is the
%% path of a UML binary, taken as it is. Either gets this host's `lpj' when
%% it has been measured: the figure is the host's, whatever the kernel.
-spec resolve(evum | file:filename_all(), fun((progress()) -> any())) ->
    {ok, binary(), [evum_opts:boot_option()]} | {error, term()}.
resolve(Kernel, Progress) ->
    resolve(Kernel, Progress, up).

%% @doc As resolve/2, for a VM of one virtual CPU (`up') or of several
%% (`smp'): evum's kernel is built in two flavours, since SMP costs every
%% guest host CPU whether it uses it or not. A path is taken as it is for
%% either (a kernel without SMP refuses `{cpus, N}' by name).
-spec resolve(evum | file:filename_all(), fun((progress()) -> any()), up | smp) ->
    {ok, binary(), [evum_opts:boot_option()]} | {error, term()}.
resolve(evum, Progress, Flavour) ->
    case ensure(Progress) of
        {ok, Path} when Flavour =:= up -> {ok, Path, lpj_option()};
        {ok, Path} when Flavour =:= smp -> {ok, filename:join(filename:dirname(Path), evum_nif:kernel_smp_binary()), lpj_option()};
        {error, _} = Error -> Error
    end;
resolve(Kernel, _Progress, _Flavour) when is_atom(Kernel) ->
    {ok, atom_to_binary(Kernel), lpj_option()};
resolve(Kernel, _Progress, _Flavour) ->
    try unicode:characters_to_binary(Kernel) of
        Path when is_binary(Path) ->
            case evum_opts:path(Path) of
                true -> {ok, Path, lpj_option()};
                false -> {error, {bad_option, {kernel, Kernel}}}
            end;
        _ -> {error, {bad_option, {kernel, Kernel}}}
    catch
        error:badarg -> {error, {bad_option, {kernel, Kernel}}}
    end.

lpj_option() ->
    case lpj() of
        undefined -> [];
        Lpj -> [{append, "lpj=" ++ integer_to_list(Lpj)}]
    end.

wait_build(Ref, Progress, LastTenth) ->
    receive
        {evum_kernel, Ref, {progress, Step}} ->
            Progress(Step),
            wait_build(Ref, Progress, log(Step, LastTenth));
        {evum_kernel, Ref, {ok, Path}} ->
            logger:notice("evum: kernel ready: ~ts", [Path]),
            {ok, Path};
        {evum_kernel, Ref, {error, Why}} ->
            logger:error("evum: building the kernel failed: ~ts", [Why]),
            {error, {kernel_build, Why}}
    end.

%% Each step to the logger, the compile at every tenth.
log({compiling, Done, Total}, LastTenth) ->
    case Done * 10 div max(Total, 1) of
        LastTenth ->
            LastTenth;
        Tenth ->
            logger:notice("evum: building the kernel: compiling, ~b of about ~b files", [Done, Total]),
            Tenth
    end;
log(Step, LastTenth) ->
    logger:notice("evum: building the kernel: ~0p", [Step]),
    LastTenth.

%% The Debian archive the source comes from: the `kernel_mirror' setting,
%% or (`system', the default) the one the machine's own apt sources use.
mirror() ->
    case application:get_env(evum, kernel_mirror, system) of
        system -> system;
        Mirror -> unicode:characters_to_binary(Mirror)
    end.

cache_dir() ->
    unicode:characters_to_binary(evum_dist:cache_dir()).
