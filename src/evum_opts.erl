%% @doc Boot options: checks what a user wrote and puts it in the one shape
%% the NIF takes, `{Name, Index, Value}' with binaries and Index -1 for none.
%% The kernel command line itself is built in Rust (evum_core::options).
-module(evum_opts).

-export([normalize/1, cpu/1, mem_mb/1, path/1]).

-export_type([boot_option/0, nif_option/0]).

%% The most virtual CPUs a guest may have: evum's kernel has NR_CPUS 8.
-define(MAX_CPUS, 8).
%% The longest path a file system call takes, in bytes (Linux's PATH_MAX,
%% 4096, counts the terminating NUL).
-define(PATH_MAX, 4095).

-type text() :: string() | binary() | atom().
-type boot_option() ::
    {con, text()}
    | {con, non_neg_integer(), text()}
    | {ssl, text()}
    | {ssl, non_neg_integer(), text()}
    | {disk, text()}
    | {disk, non_neg_integer(), text()}
    | {disk, non_neg_integer(), text(), read_only}
    | {ubd, text()}
    | {ubd, non_neg_integer(), text()}
    | {eth, text()}
    | {eth, non_neg_integer(), text()}
    | {init, text()}
    | {initrd, text()}
    | {mem, text() | pos_integer()}
    | {root, text()}
    | {rootflags, text()}
    | {rootfstype, text()}
    | verbose
    | quiet
    | {verbose, boolean()}
    | write
    | {write, boolean()}
    | {hostfs, text()}
    | {env, text(), text()}
    | {append, text() | [text()]}
    | {cpu, any | auto | non_neg_integer() | [non_neg_integer()]}
    | {seccomp, boolean()}
    | {cpus, pos_integer()}
    | {nice, 0..19}.
-type nif_option() :: {binary(), integer(), binary()}.

%% @doc Checks and converts boot options. An unknown option or a value of
%% the wrong type is `{error, {bad_option, Option}}', naming it.
-spec normalize([boot_option()]) -> {ok, [nif_option()]} | {error, {bad_option, term()}}.
normalize(Options) when is_list(Options) ->
    try
        Normalized = lists:append([option(O) || O <- Options]),
        check_cpus(Options),
        {ok, Normalized}
    catch
        throw:{bad_option, _} = Why -> {error, Why}
    end;
normalize(Options) ->
    {error, {bad_option, Options}}.

option(verbose) -> [flag(verbose, true)];
option(quiet) -> [flag(verbose, false)];
option(write) -> [flag(write, true)];
option({Flag, Bool} = O) when Flag =:= verbose; Flag =:= write; Flag =:= seccomp ->
    is_boolean(Bool) orelse throw({bad_option, O}),
    [flag(Flag, Bool)];
option({Name, Index, Value} = O) when
    Name =:= con; Name =:= ssl; Name =:= disk; Name =:= ubd; Name =:= eth
->
    (is_integer(Index) andalso Index >= 0) orelse throw({bad_option, O}),
    [{atom_to_binary(Name), Index, device(Name, text(Value, O), O)}];
option({disk, Index, Path, read_only} = O) ->
    (is_integer(Index) andalso Index >= 0) orelse throw({bad_option, O}),
    [{<<"disk_read_only">>, Index, device(disk, text(Path, O), O)}];
option({Name, Value} = O) when Name =:= disk; Name =:= ubd; Name =:= eth ->
    [{atom_to_binary(Name), 0, device(Name, text(Value, O), O)}];
option({Name, Value} = O) when Name =:= con; Name =:= ssl ->
    [{atom_to_binary(Name), -1, text(Value, O)}];
option({mem, Size} = O) ->
    [{<<"mem">>, -1, mem(Size, O)}];
option({Name, Value} = O) when Name =:= initrd; Name =:= hostfs ->
    [{atom_to_binary(Name), -1, checked_path(text(Value, O), O)}];
option({Name, Value} = O) when
    Name =:= init;
    Name =:= root;
    Name =:= rootflags;
    Name =:= rootfstype
->
    [{atom_to_binary(Name), -1, text(Value, O)}];
option({cpus, N}) when is_integer(N), N >= 1, N =< ?MAX_CPUS ->
    [{<<"cpus">>, -1, integer_to_binary(N)}];
option({cpus, _} = O) ->
    throw({bad_option, O});
option({nice, N}) when is_integer(N), N >= 0, N =< 19 ->
    [{<<"nice">>, -1, integer_to_binary(N)}];
option({nice, _} = O) ->
    throw({bad_option, O});
option({cpu, Cpu}) ->
    [{<<"cpu">>, -1, cpu_text(Cpu)}];
option({env, Key, Value} = O) ->
    [{<<"env:", (text(Key, O))/binary>>, -1, text(Value, O)}];
option({append, [C | _] = Arg} = O) when is_integer(C) ->
    [{<<"append">>, -1, text(Arg, O)}];
option({append, Args} = O) when is_list(Args) ->
    [{<<"append">>, -1, text(A, O)} || A <- Args];
option({append, Arg} = O) ->
    [{<<"append">>, -1, text(Arg, O)}];
option(O) ->
    throw({bad_option, O}).

%% Guest memory, in MB as an integer or as the kernel takes it (digits and
%% at most one unit letter, K, M or G; none is bytes), between
%% evum_mem:min_mb/0 and the host's physical memory: the kernel's own
%% `mem=' text.
mem(MB, O) when is_integer(MB) ->
    in_memory_bounds(MB bsl 20, O),
    <<(integer_to_binary(MB))/binary, "M">>;
mem(Size, O) ->
    Text = text(Size, O),
    case mem_bytes(Text) of
        {ok, Bytes} ->
            in_memory_bounds(Bytes, O),
            Text;
        error ->
            throw({bad_option, O})
    end.

in_memory_bounds(Bytes, O) ->
    Max =
        case evum_mem:host_mb() of
            undefined -> infinity;
            HostMb -> HostMb bsl 20
        end,
    (Bytes >= evum_mem:min_mb() bsl 20 andalso (Max =:= infinity orelse Bytes =< Max)) orelse
        throw({bad_option, O}).

%% The bytes a kernel `mem=' text stands for.
mem_bytes(Text) ->
    case re:run(Text, "^([0-9]+)([KMGkmg]?)$", [{capture, all_but_first, binary}]) of
        {match, [Digits, Unit]} -> {ok, binary_to_integer(Digits) bsl unit_shift(string:uppercase(Unit))};
        nomatch -> error
    end.

unit_shift(<<"K">>) -> 10;
unit_shift(<<"M">>) -> 20;
unit_shift(<<"G">>) -> 30;
unit_shift(<<>>) -> 0.

%% @doc The guest memory normalized options give, in MB (rounded up): the
%% `mem' the guest is promised, evum_mem:default_mb/0 when none is given.
-spec mem_mb([nif_option()]) -> pos_integer().
mem_mb(Normalized) ->
    case [Text || {<<"mem">>, _, Text} <- Normalized] of
        [] ->
            evum_mem:default_mb();
        Mems ->
            {ok, Bytes} = mem_bytes(lists:last(Mems)),
            (Bytes + (1 bsl 20) - 1) bsr 20
    end.

%% A disk's value. `disk' names one file, as the original's did. `ubd' is
%% UML's own spec, `FILE', `COW,BASE' or `COW,BASE,SERIAL', with `:' as
%% good a separator as `,': each file of it must be a path, and a `disk'
%% path with a separator in it would be split into files of UML's
%% choosing, so it is refused.
device(disk, Path, O) ->
    case binary:match(Path, [<<",">>, <<":">>]) of
        nomatch -> checked_path(Path, O);
        _ -> throw({bad_option, O})
    end;
device(ubd, Spec, O) ->
    case binary:split(Spec, [<<",">>, <<":">>], [global]) of
        [File] -> checked_path(File, O);
        [Cow, Base] -> [checked_path(P, O) || P <- [Cow, Base]];
        [Cow, Base, _Serial] -> [checked_path(P, O) || P <- [Cow, Base]];
        _ -> throw({bad_option, O})
    end,
    Spec;
device(_Name, Spec, _O) ->
    Spec.

%% @doc Whether a file name can reach a file system call as it is: not
%% empty, no NUL (which would end it early), at most PATH_MAX bytes.
-spec path(binary()) -> boolean().
path(Path) ->
    Path =/= <<>> andalso byte_size(Path) =< ?PATH_MAX andalso binary:match(Path, <<0>>) =:= nomatch.

checked_path(Path, O) ->
    path(Path) orelse throw({bad_option, O}),
    Path.

%% An SMP UML kernel starts only in seccomp mode, which `cpus' implies: with
%% `{seccomp, false}' the two contradict each other.
check_cpus(Options) ->
    case {lists:keyfind(cpus, 1, Options), lists:member({seccomp, false}, Options)} of
        {{cpus, _} = Cpus, true} -> throw({bad_option, {Cpus, {seccomp, false}}});
        _ -> ok
    end.

%% @doc The `cpu' option as the NIF reads it (`any', `auto', `0,2'), for a
%% VM or a switch's thread; the NIF checks the numbers against the CPUs
%% evum may use.
-spec cpu(term()) -> {ok, binary()} | {error, {bad_option, {cpu, term()}}}.
cpu(Cpu) ->
    try
        {ok, cpu_text(Cpu)}
    catch
        throw:{bad_option, _} = Bad -> {error, Bad}
    end.

cpu_text(Cpu) when Cpu =:= any; Cpu =:= auto ->
    atom_to_binary(Cpu);
cpu_text(N) when is_integer(N), N >= 0 ->
    integer_to_binary(N);
cpu_text([_ | _] = Cpus) ->
    lists:all(fun(N) -> is_integer(N) andalso N >= 0 end, Cpus) orelse throw({bad_option, {cpu, Cpus}}),
    iolist_to_binary(lists:join(",", [integer_to_binary(N) || N <- Cpus]));
cpu_text(Cpu) ->
    throw({bad_option, {cpu, Cpu}}).

flag(Name, Bool) ->
    {atom_to_binary(Name), -1, atom_to_binary(Bool)}.

text(Value, _O) when is_binary(Value) -> Value;
text(Value, _O) when is_atom(Value) -> atom_to_binary(Value);
text(Value, O) when is_list(Value) ->
    try unicode:characters_to_binary(Value) of
        Bin when is_binary(Bin) -> Bin;
        _ -> throw({bad_option, O})
    catch
        error:badarg -> throw({bad_option, O})
    end;
text(Value, O) when is_integer(Value) ->
    text(integer_to_list(Value), O);
text(_, O) ->
    throw({bad_option, O}).
