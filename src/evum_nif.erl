%% @private
%% The native half of evum (native/evum_nif). Every function here is replaced
%% by the NIF when the module loads; the bodies only run if it failed to.
-module(evum_nif).

-export([
    vm_start/8,
    jail_ids/2,
    vm_console_flow/2,
    vm_set_owner/2,
    vm_expect_echo/3,
    vm_forget_echo/2,
    vm_write/2,
    vm_run/4,
    vm_sync/2,
    vm_signal/3,
    vm_info/1,
    mconsole_request/3,
    busybox_image/2,
    fd_headroom/0,
    effective_uid/0,
    lookup_user/1,
    switch_start/4,
    switch_group/1,
    switch_stop/1,
    switch_sockets/1,
    switch_attach/5,
    switch_detach/2,
    switch_inject/3,
    switch_bind/3,
    switch_fault/2,
    switch_faults/1,
    switch_capture/4,
    switch_capture_to/5,
    switch_impair/3,
    switch_events/2,
    switch_impairments/1,
    switch_stop_capture/2,
    switch_ports/1,
    switch_mac_table/1,
    switch_counters/1,
    config_load/1,
    disk_user/1,
    image_fetch/5,
    gateway_start/2,
    gateway_stop/1,
    gateway_add_forward/2,
    gateway_remove_forward/2,
    gateway_forwards/1,
    gateway_counters/1,
    kernel_cached/1,
    kernel_lpj/1,
    kernel_smp_binary/0,
    kernel_build/4
]).

-on_load(load/0).

load() ->
    %% The library sits in priv/ beside this module's ebin/ (rebar3, mix, and
    %% a dependency of either); code:priv_dir/1 is the fallback for releases
    %% laid out otherwise.
    Beside = filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv"),
    Dir =
        case filelib:is_file(filename:join(Beside, "libevum_nif.so")) of
            true -> Beside;
            false -> code:priv_dir(evum)
        end,
    erlang:load_nif(filename:join(Dir, "libevum_nif"), 0).

-define(NOT_LOADED, erlang:nif_error({not_loaded, ?MODULE, ?LINE})).

vm_start(_Owner, _Server, _Tagged, _Kernel, _Options, _Umid, _UmlDir, _Groups) -> ?NOT_LOADED.
jail_ids(_First, _Count) -> ?NOT_LOADED.
vm_console_flow(_Vm, _Flow) -> ?NOT_LOADED.
vm_set_owner(_Vm, _Owner) -> ?NOT_LOADED.
vm_expect_echo(_Vm, _Line, _Tag) -> ?NOT_LOADED.
vm_forget_echo(_Vm, _Tag) -> ?NOT_LOADED.
vm_write(_Vm, _Data) -> ?NOT_LOADED.
vm_run(_Vm, _Id, _Command, _MaxOutput) -> ?NOT_LOADED.
vm_sync(_Vm, _Id) -> ?NOT_LOADED.
vm_signal(_Vm, _Signal, _WholeGroup) -> ?NOT_LOADED.
vm_info(_Vm) -> ?NOT_LOADED.
mconsole_request(_Socket, _Command, _TimeoutMs) -> ?NOT_LOADED.
busybox_image(_Busybox, _CacheDir) -> ?NOT_LOADED.
fd_headroom() -> ?NOT_LOADED.
effective_uid() -> ?NOT_LOADED.
lookup_user(_Name) -> ?NOT_LOADED.
switch_start(_Hub, _Cpu, _BusyPoll, _Limits) -> ?NOT_LOADED.
switch_group(_Switch) -> ?NOT_LOADED.
switch_stop(_Switch) -> ?NOT_LOADED.
switch_sockets(_Switch) -> ?NOT_LOADED.
switch_attach(_Switch, _Owner, _Server, _Mac, _Promiscuous) -> ?NOT_LOADED.
switch_detach(_Switch, _Port) -> ?NOT_LOADED.
switch_inject(_Switch, _Port, _Frame) -> ?NOT_LOADED.
switch_bind(_Switch, _Address, _Mac) -> ?NOT_LOADED.
switch_fault(_Switch, _Fault) -> ?NOT_LOADED.
switch_faults(_Switch) -> ?NOT_LOADED.
switch_capture(_Switch, _Target, _Path, _MaxBytes) -> ?NOT_LOADED.
switch_capture_to(_Switch, _Target, _Pid, _Server, _MaxFrames) -> ?NOT_LOADED.
switch_stop_capture(_Switch, _Id) -> ?NOT_LOADED.
switch_impair(_Switch, _Link, _Settings) -> ?NOT_LOADED.
switch_events(_Switch, _Pid) -> ?NOT_LOADED.
switch_impairments(_Switch) -> ?NOT_LOADED.
switch_ports(_Switch) -> ?NOT_LOADED.
switch_mac_table(_Switch) -> ?NOT_LOADED.
switch_counters(_Switch) -> ?NOT_LOADED.
config_load(_Layers) -> ?NOT_LOADED.
image_fetch(_Uri, _Dest, _Checksum, _ReplyTo, _Ref) -> ?NOT_LOADED.
disk_user(_Path) -> ?NOT_LOADED.
gateway_start(_Switch, _Config) -> ?NOT_LOADED.
gateway_stop(_Gateway) -> ?NOT_LOADED.
gateway_add_forward(_Gateway, _Forward) -> ?NOT_LOADED.
gateway_remove_forward(_Gateway, _Forward) -> ?NOT_LOADED.
gateway_forwards(_Gateway) -> ?NOT_LOADED.
gateway_counters(_Gateway) -> ?NOT_LOADED.
kernel_cached(_CacheDir) -> ?NOT_LOADED.
kernel_lpj(_CacheDir) -> ?NOT_LOADED.
kernel_smp_binary() -> ?NOT_LOADED.
kernel_build(_CacheDir, _Mirror, _ReplyTo, _Ref) -> ?NOT_LOADED.
