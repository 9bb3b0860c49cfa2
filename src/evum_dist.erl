%% @doc Dists: named guest systems and the boot options that start them.
%%
%% <ul>
%% <li>`busybox' (the default): evum's own initramfs, built on first use from
%%   the host's static busybox, which the guest reads from a read-only disk
%%   (disk 15). Needs no download; the guest's root is a tmpfs in its own
%%   memory, so nothing it writes reaches the host or other VMs.</li>
%% <li>`host': the host's own root, read-only over hostfs, as the original
%%   `evum:start()' ran.</li>
%% <li>every image of the configuration (evum_config): its base image is
%%   made on first use (evum_image) and each label gets a copy-on-write disk
%%   over it (evum_disk); a `dir' image is a host directory, read-only over
%%   hostfs, like `host'.</li>
%% </ul>
%% evum's initramfs stays PID 1 in every dist: it mounts the dist's root and
%% runs the console and evum's command loop chrooted into it, so every
%% guest has the same boot signal and command channel.
-module(evum_dist).

-export([boot_options/2, cache_dir/0, busybox_image/0]).

-type name() :: busybox | host | atom().
-type context() :: #{
    hostname := binary(),
    label := atom() | undefined,
    init := binary() | undefined,
    progress := evum_image:progress_fun()
}.
-export_type([name/0]).

%% @doc The boot options for a dist. (Which host user the VM runs as is
%% not the dist's to say: every VM gets its own, see evum_core's vm/jail.rs.)
-spec boot_options(name(), context()) -> {ok, [evum_opts:boot_option()]} | {error, term()}.
boot_options(busybox, Context) ->
    case busybox_image() of
        {ok, Image} -> {ok, initramfs(Image, Context)};
        {error, _} = Error -> Error
    end;
boot_options(host, Context) ->
    hostfs_root(<<"/">>, Context);
boot_options(Dist, Context) when is_atom(Dist) ->
    case evum_config:image(Dist) of
        {ok, #{source := {dir, Dir}} = Image} -> hostfs_root(Dir, image_init(Image, Context));
        {ok, Image} -> disk_root(Dist, Image, image_init(Image, Context));
        {error, _} = Error -> Error
    end;
boot_options(Dist, _) ->
    {error, {unknown_dist, Dist}}.

%% The root is a host directory, read-only over hostfs, which the kernel
%% confines to that directory.
hostfs_root(Dir, Context) ->
    case busybox_image() of
        {ok, Image} -> {ok, initramfs(Image, Context) ++ [{env, "EVUM_ROOT", "hostfs"}, {hostfs, Dir}]};
        {error, _} = Error -> Error
    end.

%% The root is the first disk: the label's copy-on-write disk over the
%% dist's base image.
disk_root(Dist, #{args := Args} = Image, #{label := Label, progress := Progress} = Context) ->
    case busybox_image() of
        {ok, Initramfs} ->
            case label_disk(Dist, Image, Label, Progress) of
                {ok, Ubd} ->
                    Disk = [{ubd, 0, Ubd}, {env, "EVUM_ROOT", "ubda"}],
                    {ok, initramfs(Initramfs, Context) ++ Disk ++ [kernel_arg(A) || A <- Args]};
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

%% The ubd spec of the label's copy-on-write disk, its base made if need be.
label_disk(Dist, Image, Label, Progress) ->
    case evum_image:base(Dist, Image, Progress) of
        {ok, Base} -> evum_disk:cow(Dist, Label, Base);
        {error, _} = Error -> Error
    end.

%% An image's own console program, unless the user named one.
image_init(#{init := Init}, #{init := undefined} = Context) -> Context#{init := Init};
image_init(_, Context) -> Context.

%% An image's `mem=' is the mem option (which a user's own overrides);
%% the rest go to the kernel as they are.
kernel_arg(<<"mem=", Mem/binary>>) -> {mem, Mem};
kernel_arg(Arg) -> {append, Arg}.

%% evum's busybox image: its initramfs, and busybox on a read-only disk
%% at the index evum's init mounts (ubd15, /dev/ubdp). The initramfs is
%% unpacked into tmpfs, not ramfs: UML names a root (`root=98:0') when
%% none is given, and with a root named the kernel picks ramfs, which
%% spends a page of the guest's memory on each of busybox's 270 applet
%% links (tmpfs keeps a short link in its inode).
initramfs(#{initramfs := Initramfs, disk := Disk, disk_index := Index}, #{hostname := Hostname} = Context) ->
    Init =
        case maps:get(init, Context, undefined) of
            undefined -> [];
            %% The kernel command line takes no spaces in a value.
            Command -> [{env, "EVUM_INIT", base64:encode(Command)}]
        end,
    [
        {initrd, Initramfs},
        {rootfstype, "tmpfs"},
        {disk, Index, Disk, read_only},
        {init, "/init"},
        {env, "EVUM_HOSTNAME", Hostname}
    ] ++ Init.

%% @doc The busybox image, built into the cache on first use: the
%% initramfs, the disk that holds busybox and the index the guest's init
%% mounts that disk from.
-spec busybox_image() ->
    {ok, #{initramfs := binary(), disk := binary(), disk_index := non_neg_integer()}} | {error, term()}.
busybox_image() ->
    {ok, Busybox} = application:get_env(evum, busybox),
    evum_nif:busybox_image(Busybox, cache_dir()).

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
