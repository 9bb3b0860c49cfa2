%% @doc Talking to a running VM: console input and output, commands, and the
%% management console. A VM is the pid that evm:create/1 or start/0,1
%% returned, or its label.
-module(evum).

-export([
    start/0,
    start/1,
    stop/1,
    send/2,
    send/3,
    give_away/2,
    pause/1,
    resume/1,
    kill/1,
    clock_jump/2,
    puts/2,
    write/2,
    cmd/2,
    cmd/3,
    system/2,
    reboot/1,
    info/1,
    ifconfig/2,
    ping/2,
    sniff/1,
    forward/2,
    unforward/2,
    forwards/1
]).

-export_type([cmd_options/0]).

%% What cmd/3 takes: a timeout, or options as a list or a map.
-type cmd_options() ::
    timeout()
    | [{timeout, timeout()} | {max_output, non_neg_integer()}]
    | #{timeout => timeout(), max_output => non_neg_integer()}.

-define(SEND_TIMEOUT, 5000).
-define(CMD_TIMEOUT, 30000).
%% A command's output limit: by default, and the most it may be (what the
%% native side keeps at most for one result).
-define(CMD_MAX_OUTPUT, 4 bsl 20).
-define(CMD_MAX_OUTPUT_CEILING, 16 bsl 20).
%% The longest command timeout: 2^32-1 ms (about 49 days), the limit
%% Erlang's timers have long had.
-define(MAX_TIMEOUT, 16#FFFFFFFF).

%% @doc Starts a VM running the host's own system (read-only), as the
%% original evum did.
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    start([]).

%% @doc Like start/0, with evm:create/1 options; `dist' defaults to `host',
%% and the VM joins the switch given to evum_ctl:start/1, if any.
-spec start([evm:option()]) -> {ok, pid()} | {error, term()}.
start(Options) when not is_list(Options) ->
    {error, {bad_option, Options}};
start(Options) ->
    Switch =
        case evum_ctl:switch() of
            undefined -> [];
            S -> [{switch, S}]
        end,
    evm:create(Options ++ [{dist, host} | Switch]).

%% @doc Sets up eth0 on the console, as typed: address, netmask and default
%% gateway. The output arrives as console messages.
-spec ifconfig(evm:vm(), {string(), string(), string()}) -> ok | {error, term()}.
ifconfig(Vm, {Address, Netmask, Gateway}) ->
    puts(Vm, [
        "ifconfig eth0 ", Address, " netmask ", Netmask, " up && route add default gw ", Gateway
    ]);
ifconfig(_Vm, Other) ->
    {error, {bad_option, Other}}.

%% @doc Prints every frame crossing a switch, one line each, on the caller's
%% terminal, until the returned process is killed.
-spec sniff(evum_switch:switch()) -> {ok, pid()} | {error, term()}.
sniff(Switch) ->
    evum_sniff:start(Switch).

%% @doc Pings an address once from the guest, on the console.
-spec ping(evm:vm(), inet:ip4_address() | string()) -> ok | {error, term()}.
ping(Vm, {_, _, _, _} = Address) ->
    ping(Vm, inet:ntoa(Address));
ping(Vm, Address) ->
    puts(Vm, ["ping -c 1 -W 2 ", Address]).

%% @doc Forwards a host port to a port of the guest, through the gateway of
%% the VM's switch (a network with `gateway = true', or a switch started
%% with `gateway'): `{tcp | udp, HostPort, GuestPort}' listens on
%% 127.0.0.1:HostPort (0: a free port), `{Proto, {HostAddress, HostPort},
%% GuestPort}' on another address. `{ok, BoundHostPort}'. The forward goes
%% when the VM does.
-spec forward(evm:vm(), {tcp | udp, inet:port_number() | {evum_switch:address(), inet:port_number()},
    inet:port_number()}) -> {ok, inet:port_number()} | {error, term()}.
forward(Vm, {Proto, HostPort, GuestPort}) when is_integer(HostPort) ->
    forward(Vm, {Proto, {"127.0.0.1", HostPort}, GuestPort});
forward(Vm, {Proto, {HostAddr, HostPort}, GuestPort} = Forward) ->
    case guest_network(Vm) of
        {ok, Switch, GuestAddr, Pid} ->
            case evum_switch:forward(Switch, {Proto, HostAddr, HostPort, GuestAddr, GuestPort}, Pid) of
                %% Named as the caller wrote it.
                {error, {bad_forward, _}} when HostAddr =:= "127.0.0.1" -> {error, {bad_forward, {Proto, HostPort, GuestPort}}};
                {error, {bad_forward, _}} -> {error, {bad_forward, Forward}};
                Result -> Result
            end;
        {error, _} = Error ->
            Error
    end;
forward(_Vm, Forward) ->
    {error, {bad_forward, Forward}}.

%% @doc Removes a forward: `{Proto, HostPort}' (on 127.0.0.1), `{Proto,
%% {HostAddress, HostPort}}', or the port forward/2 returned alone.
-spec unforward(evm:vm(), inet:port_number() | {tcp | udp, inet:port_number() | {evum_switch:address(), inet:port_number()}}) ->
    ok | {error, term()}.
unforward(Vm, HostPort) when is_integer(HostPort) ->
    %% The port forward/2 returned: its forward, TCP or UDP.
    case unforward(Vm, {tcp, HostPort}) of
        ok -> ok;
        {error, _} -> unforward(Vm, {udp, HostPort})
    end;
unforward(Vm, {Proto, HostPort}) when is_integer(HostPort) ->
    unforward(Vm, {Proto, {"127.0.0.1", HostPort}});
unforward(Vm, {Proto, {HostAddr, HostPort}}) ->
    case info(Vm) of
        #{switch := undefined} -> {error, no_switch};
        #{switch := Switch} -> evum_switch:unforward(Switch, {Proto, HostAddr, HostPort});
        Error -> Error
    end;
unforward(_Vm, Which) ->
    {error, {bad_forward, Which}}.

%% @doc The forwards to the VM, with their connections and bytes each way.
-spec forwards(evm:vm()) -> {ok, [map()]} | {error, term()}.
forwards(Vm) ->
    case guest_network(Vm) of
        {ok, Switch, GuestAddr, _Pid} ->
            case evum_switch:forwards(Switch) of
                {ok, All} -> {ok, [F || #{guest_addr := A} = F <- All, A =:= GuestAddr]};
                Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

%% The VM's switch and its interface's address, as the guest has it now.
guest_network(Vm) ->
    case info(Vm) of
        #{switch := undefined} ->
            {error, no_switch};
        #{switch := Switch} ->
            case cmd(Vm, "ifconfig eth0 2>/dev/null || ifconfig vec0") of
                {ok, 0, Text} ->
                    case re:run(Text, "inet (?:addr:)?([0-9.]+)", [{capture, all_but_first, binary}]) of
                        {match, [Address]} -> {ok, Switch, Address, whereis_vm(Vm)};
                        nomatch -> {error, no_address}
                    end;
                _ ->
                    {error, no_address}
            end;
        Error ->
            Error
    end.

%% @doc Stops the VM and waits until nothing of it is left.
-spec stop(evm:vm()) -> ok | {error, not_running}.
stop(Vm) ->
    evm:stop(Vm).

%% @doc Types a line on the console and returns its echo, `<<"hostname">>'
%% for `"hostname"' (the line as the guest's terminal shows it, the prompt
%% left out), or `timeout' after 5 s. Any process may call it: the echo
%% comes to the caller, not to the owner's mailbox, and the lines the guest
%% prints after it go to the owner as ever. `{error, busy}' when 64 echoes
%% are awaited already.
-spec send(evm:vm(), iodata()) -> binary() | timeout | {error, term()}.
send(Vm, Line) ->
    send(Vm, Line, ?SEND_TIMEOUT).

%% @doc As send/2, waiting up to Timeout ms (or `infinity') for the echo.
-spec send(evm:vm(), iodata(), timeout()) -> binary() | timeout | {error, term()}.
send(Vm, Line, Timeout) ->
    case {to_binary(Line), is_timeout(Timeout)} of
        {{ok, Bin}, true} -> call(Vm, {send, Bin, Timeout});
        {{error, _} = Error, _} -> Error;
        {_, false} -> {error, {bad_option, {timeout, Timeout}}}
    end.

%% @doc Makes Pid the VM's owner: the console comes to it from now on, and
%% the VM stops when Pid ends (as it did with its owner before). `{error,
%% {not_alive, Pid}}' for a process that has ended.
-spec give_away(evm:vm(), pid()) -> ok | {error, term()}.
give_away(Vm, Pid) when is_pid(Pid) ->
    call(Vm, {give_away, Pid});
give_away(_Vm, Pid) ->
    {error, {not_a_pid, Pid}}.

%% @doc Freezes the whole guest: UML's mconsole `stop', in which the
%% guest's kernel runs nothing but the management console until resume/1
%% (its timers, processes and network wait; its clock, read from the host,
%% goes on and jumps ahead at resume). The VM answers nothing meanwhile.
-spec pause(evm:vm()) -> ok | {error, term()}.
pause(Vm) ->
    ok_of(mcons:stop(Vm)).

%% @doc Thaws a guest pause/1 froze (mconsole `go').
-spec resume(evm:vm()) -> ok | {error, term()}.
resume(Vm) ->
    ok_of(mcons:go(Vm)).

%% @doc Ends the VM as a crash would: SIGKILL to every process of its UML,
%% no sync, no halt. Its disks stay as they were (a label's copy-on-write
%% disk is kept for its next boot); the owner is told `{evum, Vm, {exit,
%% {signal, sigkill}}}'.
-spec kill(evm:vm()) -> ok | {error, term()}.
kill(Vm) ->
    call(Vm, kill).

%% @doc Moves the guest's wall clock by `Seconds' (negative: back), as a
%% clock step or an NTP correction would: its kernel's CLOCK_REALTIME, set
%% from inside (busybox `date -s'); its monotonic clocks and the host's are
%% untouched.
-spec clock_jump(evm:vm(), integer()) -> ok | {error, term()}.
clock_jump(Vm, Seconds) when is_integer(Seconds) ->
    Command = ["date -s @$(( $(date +%s) + ", integer_to_list(Seconds), " )) >/dev/null"],
    case cmd(Vm, Command) of
        {ok, 0, _} -> ok;
        {ok, Status, Output} -> {error, {clock_jump, Status, Output}};
        {error, _} = Error -> Error
    end;
clock_jump(_Vm, Seconds) ->
    {error, {bad_option, {seconds, Seconds}}}.

ok_of({ok, _}) -> ok;
ok_of({error, _} = Error) -> Error.

is_timeout(infinity) -> true;
is_timeout(T) -> is_integer(T) andalso T >= 0 andalso T =< ?MAX_TIMEOUT.

%% @doc Types a line on the console.
-spec puts(evm:vm(), iodata()) -> ok | {error, term()}.
puts(Vm, Line) ->
    case write_line(Vm, Line) of
        {ok, _} -> ok;
        Error -> Error
    end.

%% @doc Writes bytes to the console as they are (no newline added).
-spec write(evm:vm(), iodata()) -> ok | {error, term()}.
write(Vm, Data) ->
    case to_binary(Data) of
        {ok, Bin} ->
            case call(Vm, {write, Bin}) of
                {ok, _} -> ok;
                Error -> Error
            end;
        Error ->
            Error
    end.

write_line(Vm, Line) ->
    case to_binary(Line) of
        {ok, Bin} -> call(Vm, {write, <<Bin/binary, "\n">>});
        Error -> Error
    end.

%% @doc Runs a shell command in the guest and returns its exit status and
%% exact output (stdout and stderr), with no echo or prompt, waiting up to
%% 30 s. Commands run on a channel of their own, never on the console, one
%% at a time in the order called. A command is any bytes but NUL, up to
%% 2048 (`{error, {too_large, 2048}}'); output over 4 MiB (see cmd/3) is
%% `{error, {output_too_large, Bytes}}', with Bytes the output's length,
%% and is not kept; `{error, busy}' when 64 wait already; `{error,
%% rebooted}' when a reboot cut it short.
-spec cmd(evm:vm(), iodata()) -> {ok, integer(), binary()} | {error, term()}.
cmd(Vm, Command) ->
    cmd(Vm, Command, []).

%% @doc As cmd/2, with a timeout in ms (or `infinity') or options, a list or
%% a map: `{timeout, Ms | infinity}' (default 30000) and `{max_output,
%% Bytes}', the most output the command may return (default 4 MiB, at most
%% 16 MiB). Output past it is `{error, {output_too_large, Bytes}}': the
%% guest's output for that command is read and thrown away, never held, and
%% the next command runs as usual. Another option or value is `{error,
%% {bad_option, Option}}'.
-spec cmd(evm:vm(), iodata(), cmd_options()) -> {ok, integer(), binary()} | {error, term()}.
cmd(Vm, Command, Options) ->
    case {to_binary(Command), cmd_options(Options)} of
        {{ok, Bin}, {ok, Checked}} -> call(Vm, {cmd, Bin, Checked});
        {{error, _} = Error, _} -> Error;
        {_, {error, _} = Error} -> Error
    end.

%% A timeout alone, as cmd/3 always took, or options; checked here, so a
%% bad one is the caller's error and never the VM's crash.
cmd_options(Timeout) when is_integer(Timeout); Timeout =:= infinity ->
    cmd_options([{timeout, Timeout}]);
cmd_options(Options) when is_map(Options) ->
    cmd_options(maps:to_list(Options));
cmd_options(Options) when is_list(Options) ->
    case lists:dropwhile(fun is_cmd_option/1, Options) of
        [Bad | _] ->
            {error, {bad_option, Bad}};
        [] ->
            Get = fun(Key, Default) -> proplists:get_value(Key, Options, Default) end,
            {ok, #{timeout => Get(timeout, ?CMD_TIMEOUT), max_output => Get(max_output, ?CMD_MAX_OUTPUT)}}
    end;
cmd_options(Other) ->
    {error, {bad_option, Other}}.

is_cmd_option({timeout, T}) -> is_timeout(T);
is_cmd_option({max_output, B}) -> is_integer(B) andalso B >= 0 andalso B =< ?CMD_MAX_OUTPUT_CEILING;
is_cmd_option(_) -> false.

%% @doc Sends a raw mconsole command ("version", "sysrq m", ...); see mcons.
-spec system(evm:vm(), iodata()) -> {ok, binary()} | {error, term()}.
system(Vm, Command) ->
    case to_binary(Command) of
        {ok, Bin} -> mcons:request(Vm, Bin);
        Error -> Error
    end.

%% @doc Reboots the guest through the mconsole. Commands called after it
%% returns run on the new boot (they wait for its command loop); one the
%% old boot was running is answered if it finished in time, else `{error,
%% rebooted}'. `{error, booting}' while the VM boots.
-spec reboot(evm:vm()) -> {ok, binary()} | {error, term()}.
reboot(Vm) ->
    call(Vm, reboot).

%% @doc The VM's OS pid, umid, runtime directory, mconsole socket, owner,
%% label, phase, and `console_dropped': the console lines dropped so far
%% (`{console_overflow, drop}' of evm:create/1; always 0 otherwise).
-spec info(evm:vm()) -> map() | {error, not_running}.
info(Vm) ->
    call(Vm, info).

call(Vm, _Request) when not is_pid(Vm), not is_atom(Vm) ->
    {error, {not_a_vm, Vm}};
call(Vm, Request) ->
    try
        gen_server:call(Vm, Request, infinity)
    catch
        exit:{noproc, _} -> {error, not_running};
        exit:{normal, _} -> {error, not_running};
        exit:{{shutdown, _}, _} -> {error, not_running};
        exit:{shutdown, _} -> {error, not_running};
        exit:{killed, _} -> {error, not_running}
    end.

whereis_vm(Pid) when is_pid(Pid) -> Pid;
whereis_vm(Name) when is_atom(Name) -> whereis(Name).

to_binary(Data) ->
    try iolist_to_binary(Data) of
        Bin -> {ok, Bin}
    catch
        error:badarg -> {error, {not_iodata, Data}}
    end.
