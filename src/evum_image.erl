%% @doc Base images in the cache: downloaded, built from a directory, or
%% built with debootstrap, each once. VMs never write to a base image: each
%% gets a copy-on-write disk over it (evum_disk).
%%
%% An image is made under a temporary name and renamed when complete, so a
%% crash or an interrupted download never leaves a half image under the
%% final name. Progress goes to the logger and to an optional function.
-module(evum_image).

-export([base/3, dir/0, run/2, no_space/2]).

-type progress() ::
    {started, Total :: non_neg_integer() | undefined, ResumedFrom :: non_neg_integer()}
    | {bytes, Done :: non_neg_integer(), Total :: non_neg_integer() | undefined}
    | verifying
    | unpacking
    | {building, Step :: binary()}.
-type progress_fun() :: fun((progress()) -> any()).
-export_type([progress/0, progress_fun/0]).

%% Built images when the configuration gives no size (sparse: only what is
%% written takes room).
-define(DEFAULT_SIZE, "2G").

%% @doc Where base images are kept: `images' in the cache directory.
-spec dir() -> file:filename().
dir() ->
    filename:join(evum_dist:cache_dir(), "images").

%% @doc The path of image `Name''s base, made first if need be.
-spec base(atom(), evum_config:image(), progress_fun()) -> {ok, binary()} | {error, term()}.
base(Name, #{source := Source} = Image, Progress) ->
    Report = fun(P) ->
        log(Name, P),
        Progress(P)
    end,
    case Source of
        {file, File} ->
            existing(in_cache(File));
        {download, File, Uri, Checksum} ->
            case download(Uri, in_cache(unpacked_name(File)), Checksum, Report) of
                {ok, Path} ->
                    case filelib:is_dir(Path) of
                        %% A tarball: its tree becomes an ext4 image.
                        true -> built(<<Path/binary, ".ext4">>, Report, fun(Tmp) -> mkfs(Path, Tmp, Image) end);
                        false -> {ok, Path}
                    end;
                Error ->
                    Error
            end;
        {from_dir, Dir} ->
            built(ext4_name(Name), Report, fun(Tmp) -> mkfs(Dir, Tmp, Image) end);
        {debootstrap, Suite, Mirror, Include} ->
            built(ext4_name(Name), Report, fun(Tmp) ->
                debootstrap(Suite, Mirror, Include, Tmp, Image, Report)
            end);
        {dir, Dir} ->
            {ok, Dir}
    end.

in_cache(File) ->
    case filename:pathtype(File) of
        absolute -> bin(File);
        _ -> bin(filename:join(dir(), File))
    end.

ext4_name(Name) ->
    in_cache(atom_to_list(Name) ++ ".ext4").

existing(Path) ->
    case filelib:is_regular(Path) of
        true -> {ok, Path};
        false -> {error, {no_image, Path}}
    end.

%% The name a download is kept under once unpacked: without the
%% compression suffix, and a tarball without .tar (it becomes a directory).
unpacked_name(File) ->
    Suffixes = [".gz", ".bz2", ".xz", ".tgz", ".tbz2", ".txz", ".tar"],
    Name = lists:foldl(
        fun(Suffix, Name) -> string:replace(Name, Suffix, "", trailing) end, binary_to_list(File), Suffixes
    ),
    unicode:characters_to_binary(Name).

download(Uri, Dest, Checksum, Report) ->
    Ref = make_ref(),
    case evum_nif:image_fetch(Uri, Dest, Checksum, self(), Ref) of
        ok -> wait_fetch(Ref, Uri, Report);
        {error, Why} -> {error, {fetch, Uri, Why}}
    end.

wait_fetch(Ref, Uri, Report) ->
    receive
        {evum_fetch, Ref, {progress, Progress}} ->
            Report(Progress),
            wait_fetch(Ref, Uri, Report);
        {evum_fetch, Ref, {ok, Path}} ->
            {ok, Path};
        %% The cache's file system full, or no file descriptor left: named
        %% as such, whatever was being fetched.
        {evum_fetch, Ref, {error, {no_space, _} = Why}} ->
            {error, Why};
        {evum_fetch, Ref, {error, {system_limit, _} = Why}} ->
            {error, Why};
        {evum_fetch, Ref, {error, Why}} ->
            {error, {fetch, Uri, Why}}
    end.

%% Builds an image at Path with Build(TmpPath), unless it is there already.
%% Concurrent builders of one image take turns: the second finds it made.
built(Path, Report, Build) ->
    global:trans({{?MODULE, Path}, self()}, fun() ->
        case filelib:is_regular(Path) of
            true -> {ok, Path};
            false -> build(Path, Report, Build)
        end
    end).

build(Path, Report, Build) ->
    case filelib:ensure_dir(Path) of
        ok ->
            Tmp = <<Path/binary, ".build">>,
            file:delete(Tmp),
            Report({building, filename:basename(Path)}),
            case Build(Tmp) of
                ok ->
                    ok = file:change_mode(Tmp, 8#644),
                    ok = file:rename(Tmp, Path),
                    {ok, Path};
                Error ->
                    file:delete(Tmp),
                    no_space(Path, Error)
            end;
        {error, enospc} ->
            {error, {no_space, Path}};
        {error, Why} ->
            {error, {image, Path, Why}}
    end.

%% @doc `{error, {no_space, Path}}' for a tool's error (run/2's) whose
%% output says its file system was full while it wrote Path; any other
%% result as it is. The tools run with LC_ALL=C, so the C library's
%% message for ENOSPC is the one to look for.
-spec no_space(binary(), ok | {error, term()}) -> ok | {error, term()}.
no_space(Path, {error, {_Tool, _Status, Output}} = Error) ->
    case binary:match(Output, <<"No space left on device">>) of
        nomatch -> Error;
        _ -> {error, {no_space, Path}}
    end;
no_space(_Path, Result) ->
    Result.

%% An ext4 image of Dir's tree: mke2fs fills it itself, no root or loop
%% device needed.
mkfs(Dir, Image, Config) ->
    Size = maps:get(size, Config, undefined),
    run("mke2fs", ["-q", "-F", "-t", "ext4", "-d", Dir, Image, image_size(Size)]).

image_size(undefined) -> ?DEFAULT_SIZE;
image_size(Size) -> Size.

debootstrap(Suite, Mirror, Include, Image, Config, Report) ->
    case evum_nif:effective_uid() of
        0 ->
            Tree = <<Image/binary, ".tree">>,
            Includes = [["--include=", lists:join(",", Include)] || Include =/= []],
            Args = ["--variant=minbase"] ++ Includes ++ [Suite, Tree, mirror(Mirror)],
            Report({building, <<"debootstrap ", Suite/binary>>}),
            %% What a build cut short (the BEAM killed) left behind.
            run("rm", ["-rf", "--one-file-system", Tree]),
            Result =
                case run("debootstrap", Args) of
                    ok ->
                        Report({building, <<"mke2fs">>}),
                        mkfs(Tree, Image, Config);
                    Error ->
                        Error
                end,
            run("rm", ["-rf", "--one-file-system", Tree]),
            Result;
        _ ->
            {error, {needs_root, debootstrap}}
    end.

%% The host's own Debian mirror, as apt is configured.
mirror(Mirror) when is_binary(Mirror) ->
    Mirror;
mirror(undefined) ->
    Sources =
        read_lines("/etc/apt/sources.list.d/debian.sources") ++ read_lines("/etc/apt/sources.list"),
    Uris = lists:append([
        case string:lexemes(Line, " \t") of
            ["URIs:", Uri | _] -> [Uri];
            ["deb", "[" ++ _ | Rest] -> [U || U <- Rest, lists:prefix("http", U)];
            ["deb", Uri | _] -> [Uri];
            _ -> []
        end
     || Line <- Sources
    ]),
    case [U || U <- Uris, string:find(U, "security") =:= nomatch] of
        [Uri | _] -> Uri;
        [] -> "http://deb.debian.org/debian"
    end.

read_lines(File) ->
    case file:read_file(File) of
        {ok, Text} -> string:lexemes(binary_to_list(Text), "\n");
        {error, _} -> []
    end.

%% @doc Runs a host tool (found on PATH or in sbin) to completion: `ok', or
%% `{error, {not_found, Tool}}' or `{error, {Tool, Status, OutputTail}}'.
-spec run(string(), [string() | binary()]) -> ok | {error, term()}.
run(Tool, Args) ->
    case find(Tool) of
        false ->
            {error, {not_found, Tool}};
        Exe ->
            Port = open_port({spawn_executable, Exe}, [
                {args, Args}, exit_status, stderr_to_stdout, binary, {env, [{"LC_ALL", "C"}]}
            ]),
            collect(Port, Tool, [])
    end.

collect(Port, Tool, Output) ->
    receive
        {Port, {data, Data}} ->
            collect(Port, Tool, [Data | Output]);
        {Port, {exit_status, 0}} ->
            ok;
        {Port, {exit_status, Status}} ->
            {error, {Tool, Status, tail(iolist_to_binary(lists:reverse(Output)))}}
    end.

%% The last 2 KiB of a tool's output: where its error is.
tail(Output) when byte_size(Output) =< 2048 -> Output;
tail(Output) -> binary:part(Output, byte_size(Output), -2048).

%% Tools like mke2fs live in sbin, which a user's PATH may lack.
find(Tool) ->
    case os:find_executable(Tool) of
        false -> os:find_executable(Tool, "/usr/sbin:/sbin:/usr/bin:/bin");
        Exe -> Exe
    end.

log(Name, {started, Total, From}) ->
    logger:notice("evum: fetching image ~p (~s)~s", [Name, bytes(Total), resumed(From)]);
log(Name, {bytes, Done, Total}) ->
    logger:debug("evum: image ~p: ~b of ~s", [Name, Done, bytes(Total)]);
log(Name, {building, What}) ->
    logger:notice("evum: building image ~p: ~ts", [Name, What]);
log(_Name, _) ->
    ok.

bytes(undefined) -> "size unknown";
bytes(N) -> io_lib:format("~b bytes", [N]).

resumed(0) -> "";
resumed(From) -> io_lib:format(", resuming at ~b", [From]).

bin(Path) -> unicode:characters_to_binary(Path).
