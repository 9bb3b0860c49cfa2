%% @doc Dists: named guest systems and the boot options that start them.
%%
%% <ul>
%% <li>`busybox' (the default): evum's own initramfs, built on first use from
%%   the host's static busybox. Needs no download; the guest's root is a tmpfs
%%   in its own memory, so nothing it writes reaches the host or other VMs.</li>
%% <li>`host': the host's own root, read-only over hostfs, as the original
%%   `evum:start()' ran. When the BEAM runs as root, the VM runs as `nobody'.</li>
%% </ul>
-module(evum_dist).

-export([boot_options/2, cache_dir/0, busybox_image/0, host_user/0]).

-type name() :: busybox | host.
-export_type([name/0]).

%% @doc The boot options and the host user (`undefined' for evum's own) for
%% a dist.
-spec boot_options(name(), #{hostname := binary()}) ->
    {ok, [evum_opts:boot_option()], undefined | {non_neg_integer(), non_neg_integer()}}
    | {error, term()}.
boot_options(busybox, #{hostname := Hostname}) ->
    case busybox_image() of
        {ok, Image} -> {ok, initramfs(Image, Hostname), undefined};
        {error, _} = Error -> Error
    end;
boot_options(host, #{hostname := Hostname}) ->
    case {busybox_image(), host_user()} of
        {{ok, Image}, {ok, RunAs}} ->
            {ok, initramfs(Image, Hostname) ++ [{env, "EVUM_ROOT", "host"}, {hostfs, "/"}], RunAs};
        {{error, _} = Error, _} ->
            Error;
        {_, {error, _} = Error} ->
            Error
    end;
boot_options(Dist, _) ->
    {error, {unknown_dist, Dist}}.

initramfs(Image, Hostname) ->
    [{initrd, Image}, {init, "/init"}, {env, "EVUM_HOSTNAME", Hostname}].

%% @doc The host user `host' VMs run as: `undefined' for evum's own.
%% As root, a guest's root could remount the host's root read-write and
%% write through hostfs: such VMs run as an unprivileged user instead.
-spec host_user() -> {ok, undefined | {non_neg_integer(), non_neg_integer()}} | {error, term()}.
host_user() ->
    case evum_nif:effective_uid() of
        0 ->
            case evum_nif:lookup_user("nobody") of
                {ok, Ids} -> {ok, Ids};
                {error, not_found} -> {error, {no_unprivileged_user, nobody}}
            end;
        _ ->
            {ok, undefined}
    end.

%% @doc The busybox initramfs, built into the cache on first use.
-spec busybox_image() -> {ok, binary()} | {error, term()}.
busybox_image() ->
    {ok, Busybox} = application:get_env(evum, busybox),
    evum_nif:busybox_initramfs(Busybox, cache_dir()).

%% @doc Where images are kept: the `cache_dir' application setting, or
%% /var/cache/evum for root (readable by the unprivileged user that `host'
%% VMs run as) and the user's cache directory otherwise.
-spec cache_dir() -> file:filename_all().
cache_dir() ->
    case application:get_env(evum, cache_dir, default) of
        default ->
            case evum_nif:effective_uid() of
                0 -> "/var/cache/evum";
                _ -> filename:basedir(user_cache, "evum")
            end;
        Dir ->
            Dir
    end.
