%% @doc Copy-on-write disks: each label gets its own over a dist's base
%% image (`ubda=COW,BASE' as in the original), kept across stops and boots
%% of that label until evm:destroy/1 removes it. A VM without a label gets
%% one in its runtime directory, which goes with the VM.
-module(evum_disk).

-include_lib("kernel/include/file.hrl").

-export([cow/3, destroy/1, dir/0, reclaim/1]).

%% @doc Where labels' disks are kept: the `state_dir' application setting,
%% or /var/lib/evum for root and the user's data directory otherwise.
-spec dir() -> file:filename().
dir() ->
    case application:get_env(evum, state_dir, default) of
        default ->
            case evum_nif:effective_uid() of
                0 -> "/var/lib/evum";
                _ -> filename:basedir(user_data, "evum")
            end;
        Dir ->
            Dir
    end.

%% @doc The ubd spec `COW,BASE' for a VM of `Dist' with `Label'. A COW a
%% live VM writes (in this BEAM or another) is `{error, {disk_in_use, Path,
%% OsPid}}': two guests writing one disk would corrupt it.
-spec cow(atom(), atom() | undefined, binary()) -> {ok, binary()} | {error, term()}.
cow(Dist, Label, Base) ->
    case spec_file(Base) of
        ok -> label_cow(Dist, Label, Base);
        {error, _} = Error -> Error
    end.

label_cow(_Dist, undefined, Base) ->
    {ok, <<"{runtime_dir}/disk.cow,", Base/binary>>};
label_cow(Dist, Label, Base) ->
    Path = unicode:characters_to_binary(path(Label, Dist)),
    case spec_file(Path) of
        ok -> existing_cow(Path, Base);
        {error, _} = Error -> Error
    end.

existing_cow(Path, Base) ->
    case ensure_dir(Path) of
        ok ->
            case filelib:is_regular(Path) andalso evum_nif:disk_user(Path) of
                false -> make_cow(Path, Base);
                {ok, none} -> unused_cow(Path, Base);
                {ok, OsPid} -> {error, {disk_in_use, Path, OsPid}};
                {error, Why} -> {error, {disk, Path, Why}}
            end;
        {error, _} = Error ->
            Error
    end.

%% A COW no VM uses. An empty one is what a uml_mkcow cut short (by a full
%% file system, or a BEAM killed) left: UML would refuse it at boot, so it
%% is made again; it held nothing of the guest's.
unused_cow(Path, Base) ->
    case filelib:file_size(Path) of
        0 ->
            ok = file:delete(Path),
            make_cow(Path, Base);
        _ ->
            {ok, <<Path/binary, ",", Base/binary>>}
    end.

%% A file of the ubd spec `COW,BASE': `,' and `:' separate its files, so a
%% file name with either would be cut there and the guest given another
%% disk (the cache or state directory settings, or an image's file, are
%% where such a name would come from).
spec_file(Path) ->
    case evum_opts:path(Path) andalso binary:match(Path, [<<",">>, <<":">>]) =:= nomatch of
        true -> ok;
        false -> {error, {bad_option, {disk, Path}}}
    end.

ensure_dir(Path) ->
    case filelib:ensure_dir(Path) of
        ok -> ok;
        {error, enospc} -> {error, {no_space, Path}};
        {error, Why} -> {error, {disk, Path, atom_to_binary(Why)}}
    end.

%% A label's first boot: evum makes the COW (uml_mkcow, UML's own format)
%% rather than the VM, whose host user may write the disk it is lent but
%% not the directory that keeps every label's disks. Readable by its owner
%% alone: it holds what the guest wrote. A COW that could not be made
%% whole is removed, so that the next boot does not take it for a disk.
make_cow(Path, Base) ->
    case evum_image:run("uml_mkcow", [Path, Base]) of
        ok ->
            ok = file:change_mode(Path, 8#600),
            {ok, <<Path/binary, ",", Base/binary>>};
        {error, {not_found, _}} ->
            {error, {disk, Path, <<"cannot make a COW disk (install uml-utilities for uml_mkcow)">>}};
        {error, {_, _, Output}} = Error ->
            file:delete(Path),
            case evum_image:no_space(Path, Error) of
                {error, {no_space, _}} = Full -> Full;
                _ -> {error, {disk, Path, Output}}
            end
    end.

%% @doc Gives back to evum's user (root) every label's disk still lent to a
%% VM's host user, one of the ids `Count' from `First': a BEAM that died with
%% VMs running could not, and the id may go to another VM next, which must
%% not read this one's disk. A VM of another BEAM that runs meanwhile keeps
%% the disk it has open.
-spec reclaim({non_neg_integer(), pos_integer()}) -> ok.
reclaim({First, Count}) ->
    case evum_nif:effective_uid() of
        0 ->
            Lent = [
                Disk
             || Disk <- filelib:wildcard(filename:join([dir(), "disks", "*", "*.cow"])),
                {ok, #file_info{uid = Uid}} <- [file:read_link_info(Disk)],
                Uid >= First,
                Uid < First + Count
            ],
            [file:change_owner(Disk, 0, 0) || Disk <- Lent],
            ok;
        _ ->
            ok
    end.

%% @doc Removes a label's disks (one per dist it booted). A label whose VM
%% runs is `{error, {running, Label}}'.
-spec destroy(atom()) -> ok | {error, {running, atom()} | {not_found, atom()}}.
destroy(Label) when is_atom(Label) ->
    case whereis(Label) of
        Pid when is_pid(Pid) ->
            {error, {running, Label}};
        undefined ->
            Dir = filename:dirname(path(Label, any)),
            case filelib:is_dir(Dir) of
                true -> file:del_dir_r(Dir);
                false -> {error, {not_found, Label}}
            end
    end.

path(Label, Dist) ->
    filename:join([dir(), "disks", file_name(Label), file_name(Dist) ++ ".cow"]).

%% A label as a file name: letters, digits, - and _ as they are, every other
%% byte as %XX, so no label names a path outside the disks directory.
file_name(Atom) ->
    lists:append([
        case C of
            _ when C >= $a, C =< $z; C >= $A, C =< $Z; C >= $0, C =< $9; C =:= $-; C =:= $_ -> [C];
            _ -> io_lib:format("%~2.16.0B", [C])
        end
     || <<C>> <= atom_to_binary(Atom)
    ]).
