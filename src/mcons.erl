%% @doc The UML management console of a VM: the commands Debian's
%% uml_mconsole sends, spoken by evum's own client. Each returns `{ok, Text}'
%% or `{error, Text}' as the guest answered, or `{error, Reason}' when the
%% guest could not be asked (`timeout', `not_running', ...).
-module(mcons).

-export([
    version/1,
    help/1,
    halt/1,
    reboot/1,
    config/2,
    config/3,
    remove/2,
    sysrq/2,
    cad/1,
    stop/1,
    go/1,
    log/2,
    proc/2,
    request/2
]).

-define(TIMEOUT, 5000).

-type reply() :: {ok, binary()} | {error, binary() | atom() | {atom(), term()}}.

-spec version(evm:vm()) -> reply().
version(Vm) -> request(Vm, <<"version">>).

-spec help(evm:vm()) -> reply().
help(Vm) -> request(Vm, <<"help">>).

%% @doc Halts the guest at once, without running its shutdown.
-spec halt(evm:vm()) -> reply().
halt(Vm) -> request(Vm, <<"halt">>).

-spec reboot(evm:vm()) -> reply().
reboot(Vm) -> request(Vm, <<"reboot">>).

%% @doc Shows a device's configuration (`config(Vm, "eth0")').
-spec config(evm:vm(), iodata()) -> reply().
config(Vm, Device) -> request(Vm, ["config ", Device]).

%% @doc Adds or changes a device (`config(Vm, "ubdb", "/tmp/disk.img")').
-spec config(evm:vm(), iodata(), iodata()) -> reply().
config(Vm, Device, Spec) -> request(Vm, ["config ", Device, "=", Spec]).

-spec remove(evm:vm(), iodata()) -> reply().
remove(Vm, Device) -> request(Vm, ["remove ", Device]).

%% @doc A magic SysRq key, e.g. `sysrq(Vm, "m")' for a memory report.
-spec sysrq(evm:vm(), iodata()) -> reply().
sysrq(Vm, Key) -> request(Vm, ["sysrq ", Key]).

%% @doc Ctrl-Alt-Del: init decides what it means.
-spec cad(evm:vm()) -> reply().
cad(Vm) -> request(Vm, <<"cad">>).

%% @doc Pauses the guest; go/1 resumes it.
-spec stop(evm:vm()) -> reply().
stop(Vm) -> request(Vm, <<"stop">>).

-spec go(evm:vm()) -> reply().
go(Vm) -> request(Vm, <<"go">>).

%% @doc Writes a line to the guest kernel's log.
-spec log(evm:vm(), iodata()) -> reply().
log(Vm, Text) -> request(Vm, ["log ", Text]).

%% @doc Reads a file under the guest's /proc (`proc(Vm, "meminfo")').
-spec proc(evm:vm(), iodata()) -> reply().
proc(Vm, File) -> request(Vm, ["proc ", File]).

%% @doc Sends any mconsole command.
-spec request(evm:vm(), iodata()) -> reply().
request(Vm, Command) ->
    case evum:info(Vm) of
        #{mconsole_socket := Socket, running := true} ->
            try iolist_to_binary(Command) of
                Bin -> evum_nif:mconsole_request(Socket, Bin, ?TIMEOUT)
            catch
                error:badarg -> {error, {not_iodata, Command}}
            end;
        #{} ->
            {error, not_running};
        {error, _} = Error ->
            Error
    end.
