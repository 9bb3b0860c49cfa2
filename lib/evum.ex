defmodule Evum do
  @moduledoc """
  Talking to a running VM: console input and output, commands, and the
  management console. The Elixir face of the Erlang module `:evum`, with the
  same functions, arguments and results.

  A VM is the pid that `Evm.create/1` or `start/0,1` returned, or its label
  (see `t:Evm.vm/0`). Text going in is iodata, so strings, charlists and
  lists of them all work; text coming out is binaries (strings).

  ## Messages to the owner

  The process that created a VM is its owner. It receives:

    * each console line, without its line ending, as a binary (`"evm"`),
      or as `{:evum, vm, {:console, line}}` for a VM created with
      `tagged: true`. The boot messages come first, then whatever the
      guest's console shell prints: the echo of each line typed, its
      output, and the prompt (`"root@evm:~# "`), a line of its own once the
      console has been quiet for a moment (see `send/2`);
    * `{:evum, vm, {:console_dropped, n}}`, for a VM created with
      `console_overflow: :drop`, when console lines flow again after `n`
      of them were dropped while the owner was behind (see `Evm.create/1`);
    * `{:evum, vm, {:exit, how}}` once, when the guest has ended, with `how`
      `{:exit_status, n}` or `{:signal, name}` (`name` an atom such as
      `:sigkill`). It comes also when `Evm.stop/1` stopped the VM, and for
      a VM whose boot timed out (`{:error, :boot_timeout}`), whose pid the
      owner never got.

  `vm` in these messages is the VM's pid, also for a VM with a label.

  The exit message comes from the VM's process: when that process itself is
  killed (`Process.exit(vm, :kill)`), the guest is killed with it but no
  message comes. Monitor the VM's pid to learn of that.

  The VM stops when its owner exits, normally or not. Commands run with
  `cmd/2,3` use a channel of their own: their output never reaches the
  console, nor the owner's mailbox.

  ## Example

  A VM whose owner prints its console until the guest ends:

      {:ok, vm} = Evm.create(label: :demo, tagged: true)
      {:ok, 0, "evm\\n"} = Evum.cmd(vm, "hostname")   # no console message
      :ok = Evum.puts(vm, "uname -r; poweroff -f")

      print = fn print ->
        receive do
          {:evum, ^vm, {:console, line}} -> IO.puts(line); print.(print)
          {:evum, ^vm, {:exit, how}} -> how
        end
      end

      print.(print)
      # the boot messages, the prompt, "uname -r; poweroff -f", "6.1.176",
      # ..., then {:exit_status, 0}
  """

  @doc """
  Starts a VM running the host's own system (read-only), as the original
  evum did: `start([])`.
  """
  @spec start() :: {:ok, pid()} | {:error, term()}
  defdelegate start(), to: :evum

  @doc """
  Like `start/0`, with `Evm.create/1` options; `:dist` defaults to `:host`.
  The caller is the VM's owner.
  """
  @spec start([Evm.option()]) :: {:ok, pid()} | {:error, term()}
  defdelegate start(options), to: :evum

  @doc """
  Stops the VM and waits until nothing of it is left; see `Evm.stop/1`.
  """
  @spec stop(Evm.vm()) :: :ok | {:error, :not_running}
  defdelegate stop(vm), to: :evum

  @doc """
  Types a line on the console (a newline is added) and returns its echo,
  the line as the guest's terminal shows it (without the prompt), or
  `:timeout` after 5 seconds. Any process may call it: the echo comes to
  the caller and is not also sent to the owner; what the guest prints after
  it goes to the owner as ever. `{:error, :busy}` when 64 echoes are
  awaited already.

      iex> Evum.send(vm, "hostname")
      "hostname"
      iex> flush()
      "evm"
      "root@evm:~# "

  Data that is not iodata is `{:error, {:not_iodata, data}}`, a VM that
  has ended `{:error, :not_running}`.
  """
  @spec send(Evm.vm(), iodata()) :: binary() | :timeout | {:error, term()}
  defdelegate send(vm, line), to: :evum

  @doc """
  Like `send/2`, waiting `timeout` milliseconds for the reply.
  """
  @spec send(Evm.vm(), iodata(), timeout()) :: binary() | :timeout | {:error, term()}
  defdelegate send(vm, line, timeout), to: :evum

  @doc """
  Makes `pid` the VM's owner: the console goes to it from now on, and the
  VM stops when it ends. `{:error, {:not_alive, pid}}` for a process that
  has ended.
  """
  @spec give_away(Evm.vm(), pid()) :: :ok | {:error, term()}
  defdelegate give_away(vm, pid), to: :evum

  @doc """
  Freezes the whole guest (UML's mconsole `stop`): it answers nothing until
  `resume/1`; its clock, the host's, jumps ahead by the pause.
  """
  @spec pause(Evm.vm()) :: :ok | {:error, term()}
  defdelegate pause(vm), to: :evum

  @doc "Thaws a guest `pause/1` froze (mconsole `go`)."
  @spec resume(Evm.vm()) :: :ok | {:error, term()}
  defdelegate resume(vm), to: :evum

  @doc """
  Ends the VM as a crash would: SIGKILL, no sync, no halt; its disks stay as
  they were. The owner is told `{:evum, vm, {:exit, {:signal, :sigkill}}}`.
  """
  @spec kill(Evm.vm()) :: :ok | {:error, term()}
  defdelegate kill(vm), to: :evum

  @doc """
  Moves the guest's wall clock by `seconds` (negative: back), as a clock step
  would; its monotonic clocks and the host's are untouched.
  """
  @spec clock_jump(Evm.vm(), integer()) :: :ok | {:error, term()}
  defdelegate clock_jump(vm, seconds), to: :evum

  @doc """
  Types a line on the console (a newline is added). Its echo and output
  come to the owner as messages.
  """
  @spec puts(Evm.vm(), iodata()) :: :ok | {:error, term()}
  defdelegate puts(vm, line), to: :evum

  @doc """
  Writes bytes to the console as they are, with no newline added (`"\\x03"`
  is Ctrl-C).
  """
  @spec write(Evm.vm(), iodata()) :: :ok | {:error, term()}
  defdelegate write(vm, data), to: :evum

  @doc """
  Runs a shell command in the guest and returns its exit status and exact
  output (stdout and stderr), with no echo or prompt, waiting up to 30
  seconds. Commands run on a channel of their own, never on the console, so
  any process may run them.

      iex> Evum.cmd(vm, "echo hi; exit 3")
      {:ok, 3, "hi\\n"}

  `{:error, :timeout}` when it takes longer, `{:error, :booting}` while the
  guest boots, `{:error, :not_running}` once it has ended.

  Commands run one at a time, in the order called. A command is any bytes
  but NUL, up to 2048 (`{:error, {:too_large, 2048}}`); output over 4 MiB
  (see `cmd/3`) is `{:error, {:output_too_large, bytes}}`, with `bytes`
  the output's length, and is not kept; `{:error, :busy}` when 64 wait
  already; `{:error, :rebooted}` when a reboot cut it short.
  """
  @spec cmd(Evm.vm(), iodata()) :: {:ok, integer(), binary()} | {:error, term()}
  defdelegate cmd(vm, command), to: :evum

  @doc """
  Like `cmd/2`, with a timeout in milliseconds (or `:infinity`), or
  options as a keyword list or a map:

    * `:timeout` - milliseconds to wait for the result (or `:infinity`),
      30000 by default;
    * `:max_output` - the most output the command may return, in bytes:
      4 MiB by default, 16 MiB at most.

  Output past `:max_output` is `{:error, {:output_too_large, bytes}}`: the
  guest's output for that command is read and thrown away, never held in
  memory, and the next command runs as usual.

      iex> Evum.cmd(vm, "head -c 5000000 /dev/zero")
      {:error, {:output_too_large, 5000000}}
      iex> {:ok, 0, zeros} = Evum.cmd(vm, "head -c 5000000 /dev/zero", max_output: 8_000_000)
      iex> byte_size(zeros)
      5000000

  Another option, or a value out of range, is
  `{:error, {:bad_option, option}}`.
  """
  @spec cmd(
          Evm.vm(),
          iodata(),
          timeout()
          | [{:timeout, timeout()} | {:max_output, non_neg_integer()}]
          | %{optional(:timeout) => timeout(), optional(:max_output) => non_neg_integer()}
        ) :: {:ok, integer(), binary()} | {:error, term()}
  defdelegate cmd(vm, command, options), to: :evum

  @doc """
  Sends a raw mconsole command (`"version"`, `"sysrq m"`, ...); see
  `Evum.Mcons.request/2`.
  """
  @spec system(Evm.vm(), iodata()) :: {:ok, binary()} | {:error, term()}
  defdelegate system(vm, command), to: :evum

  @doc """
  Reboots the guest through the mconsole. Commands called after it returns
  run on the new boot; one the old boot was running is answered if it
  finished in time, else `{:error, :rebooted}`. `Evum.Mcons.reboot/1` is
  the bare mconsole request.
  """
  @spec reboot(Evm.vm()) :: {:ok, binary()} | {:error, term()}
  defdelegate reboot(vm), to: :evum

  @doc """
  The VM's OS pid, umid, runtime directory, mconsole socket, owner, label,
  phase and the console lines dropped so far, as a map:

      %{
        os_pid: 17738,
        umid: "evum-16901-1",
        runtime_dir: "/tmp/evum-0/evum-16901-1",
        mconsole_socket: "/tmp/evum-0/evum-16901-1/mconsole",
        running: true,
        console_dropped: 0,
        owner: #PID<0.96.0>,
        label: :test1,
        phase: :ready
      }

  `label` is `:undefined` (Erlang's `undefined`) for a VM without one;
  `phase` is `:booting`, `:ready`, `:stopping` or `:exited`;
  `console_dropped` counts the lines a VM created with
  `console_overflow: :drop` has dropped (always 0 otherwise).
  `{:error, :not_running}` for a VM that is not there.
  """
  @spec info(Evm.vm()) :: map() | {:error, :not_running}
  defdelegate info(vm), to: :evum

  @doc """
  Sets up the guest's eth0 on its console, as typed there: address,
  netmask and default gateway, e.g.
  `Evum.ifconfig(vm, {"10.0.0.2", "255.255.255.0", "10.0.0.1"})`. The
  output arrives as console messages. The VM needs a network: create it
  with `switch: s` (see `Evum.Switch`).
  """
  @spec ifconfig(
          Evm.vm(),
          {charlist() | String.t(), charlist() | String.t(), charlist() | String.t()}
        ) ::
          :ok | {:error, term()}
  defdelegate ifconfig(vm, config), to: :evum

  @doc """
  Pings an address (`{10, 0, 0, 1}` or `"10.0.0.1"`) once from the guest,
  on its console; the output arrives as console messages.
  """
  @spec ping(Evm.vm(), :inet.ip4_address() | String.t() | charlist()) :: :ok | {:error, term()}
  defdelegate ping(vm, address), to: :evum

  @doc """
  Prints every frame crossing a switch, one line each (addresses, ARP, IPv4
  with ICMP, TCP or UDP), on the caller's terminal, until the returned
  process is killed.
  """
  @spec sniff(Evum.Switch.switch()) :: {:ok, pid()} | {:error, term()}
  defdelegate sniff(switch), to: :evum

  @doc """
  Forwards a host port to a port of the guest through the gateway of the
  VM's switch (a network with `gateway = true`, such as `:user`, or a switch
  started with `:gateway`). `{:tcp, host_port, guest_port}` listens on
  127.0.0.1 (`0` picks a free port); `{:tcp, {host_address, host_port},
  guest_port}` on another address. `{:ok, bound_port}`; the forward goes
  when the VM does.

      {:ok, vm} = Evm.create(net: :user)
      {:ok, port} = Evum.forward(vm, {:tcp, 0, 7777})
  """
  @spec forward(Evm.vm(), tuple()) :: {:ok, :inet.port_number()} | {:error, term()}
  defdelegate forward(vm, forward), to: :evum

  @doc "Removes a forward: `{:tcp, host_port}` or `{:tcp, {host_address, host_port}}`."
  @spec unforward(Evm.vm(), tuple()) :: :ok | {:error, term()}
  defdelegate unforward(vm, forward), to: :evum

  @doc "The forwards to the VM, with their connections and bytes each way."
  @spec forwards(Evm.vm()) :: {:ok, [map()]} | {:error, term()}
  defdelegate forwards(vm), to: :evum
end
