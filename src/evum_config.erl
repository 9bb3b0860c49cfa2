%% @doc evum's configuration: named networks and images (dists).
%%
%% Read from, in order, each overriding the ones before entry by entry:
%% `priv/evm.toml' (the defaults evum ships), `priv/evm.cfg' (the original
%% evum's file of Erlang terms) when present, and the file the `config'
%% application setting names (toml, or Erlang terms when it ends in `.cfg').
%% The files are parsed and checked in Rust (evum_core::config); a bad file
%% is `{error, {config, File, Key, Message}}'. What was read is kept until
%% one of the files changes.
-module(evum_config).

-export([read/0, network/1, image/1, files/0]).

-type network() :: #{
    base_ip := binary(),
    first_ip := 1..254,
    netmask := binary(),
    gw := binary(),
    ping := binary() | undefined
}.
-type checksum() :: {sha256, binary()} | {md5, binary()} | undefined.
-type source() ::
    {file, binary()}
    | {download, File :: binary(), Uri :: binary(), checksum()}
    | {dir, binary()}
    | {from_dir, binary()}
    | {debootstrap, Suite :: binary(), Mirror :: binary() | undefined, Include :: [binary()]}.
-type image() :: #{
    source := source(),
    size := binary() | undefined,
    args := [binary()],
    net := boolean(),
    init := binary() | undefined
}.
-type config() :: #{networks := #{atom() => network()}, images := #{atom() => image()}}.
-type error() :: {config, File :: binary(), Key :: binary(), Message :: binary()}.
-export_type([network/0, image/0, source/0, config/0, error/0]).

%% @doc The merged configuration.
-spec read() -> {ok, config()} | {error, error()}.
read() ->
    Files = files(),
    Stamp = [{File, filelib:last_modified(File)} || {_, File} <- Files],
    case persistent_term:get(?MODULE, undefined) of
        {Stamp, Config} -> {ok, Config};
        _ -> load(Files, Stamp)
    end.

%% @doc A named network.
-spec network(atom()) -> {ok, network()} | {error, {unknown_network, atom()} | error()}.
network(Name) ->
    lookup(networks, Name, unknown_network).

%% @doc A named image.
-spec image(atom()) -> {ok, image()} | {error, {unknown_dist, atom()} | error()}.
image(Name) ->
    lookup(images, Name, unknown_dist).

%% @doc The files read, in order, as `{toml | terms, Path}'.
-spec files() -> [{toml | terms, file:filename()}].
files() ->
    Priv = priv_dir(),
    Legacy = filename:join(Priv, "evm.cfg"),
    User =
        case application:get_env(evum, config) of
            {ok, Path} -> [{kind(Path), Path}];
            undefined -> []
        end,
    [{toml, filename:join(Priv, "evm.toml")}] ++
        [{terms, Legacy} || filelib:is_regular(Legacy)] ++ User.

lookup(Section, Name, Unknown) ->
    case read() of
        {ok, #{Section := #{Name := Entry}}} -> {ok, Entry};
        {ok, _} -> {error, {Unknown, Name}};
        {error, _} = Error -> Error
    end.

kind(Path) ->
    case filename:extension(Path) of
        ".cfg" -> terms;
        _ -> toml
    end.

load(Files, Stamp) ->
    case layers(Files, []) of
        {ok, Layers} ->
            case evum_nif:config_load(Layers) of
                {ok, Config, Warnings} ->
                    [logger:warning("evum: ~ts", [W]) || W <- Warnings],
                    persistent_term:put(?MODULE, {Stamp, Config}),
                    {ok, Config};
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

%% The original format is Erlang terms: the BEAM reads them, Rust checks them.
layers([], Acc) ->
    {ok, lists:reverse(Acc)};
layers([{toml, File} | Rest], Acc) ->
    layers(Rest, [{toml, bin(File)} | Acc]);
layers([{terms, File} | Rest], Acc) ->
    case file:consult(File) of
        {ok, Terms} ->
            layers(Rest, [{terms, bin(File), Terms} | Acc]);
        {error, Reason} ->
            Message = unicode:characters_to_binary(file:format_error(Reason)),
            {error, {config, bin(File), <<>>, Message}}
    end.

priv_dir() ->
    %% priv/ beside ebin/, as evum_nif finds the NIF.
    Beside = filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv"),
    case filelib:is_dir(Beside) of
        true -> Beside;
        false -> code:priv_dir(evum)
    end.

bin(Path) -> unicode:characters_to_binary(Path).
