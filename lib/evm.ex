defmodule Evm do
  @moduledoc """
  Creating VMs by label and dist: the Elixir face of the Erlang module
  `:evm`, with the same functions, arguments and results.

  A VM is a User-Mode Linux guest run by an Erlang process. The process that
  creates it is its *owner* (or the one `owner: pid` names): it receives the
  guest's console lines and is told when the guest ends, and the VM stops
  when the owner exits. `Evum.give_away/2` hands it to another process;
  `start_link/1` and `child_spec/1` put it under a supervisor. See
  `Evum` for talking to a running VM and for the messages the owner
  receives, and `Evum.Mcons` for its management console.

  ## Quick Start

      iex> {:ok, vm} = Evm.create(label: :test1)
      iex> flush()                      # the boot messages, as binaries
      iex> Evum.send(vm, "hostname")    # the echo of the command
      "hostname"
      iex> flush()                      # then the output and the prompt
      "evm"
      "root@evm:~# "
      iex> Evum.cmd(vm, "echo hi; exit 3")
      {:ok, 3, "hi\\n"}
      iex> Evm.stop(vm)
      :ok
  """

  @typedoc """
  A VM: the pid that `create/1` returned, or its label.
  """
  @type vm :: pid() | atom()

  @typedoc """
  A text value of a boot option: a string, a charlist or an atom.
  """
  @type text :: String.t() | charlist() | atom()

  @typedoc """
  The boot options of the original evum, checked and passed to the UML
  kernel. `con`, `ssl`, `disk`, `ubd` and `eth` take an optional device
  index (`{:ubd, 1, "/tmp/disk.img"}`).
  """
  @type boot_option ::
          {:con, text()}
          | {:con, non_neg_integer(), text()}
          | {:ssl, text()}
          | {:ssl, non_neg_integer(), text()}
          | {:disk, text()}
          | {:disk, non_neg_integer(), text()}
          | {:ubd, text()}
          | {:ubd, non_neg_integer(), text()}
          | {:eth, text()}
          | {:eth, non_neg_integer(), text()}
          | {:init, text()}
          | {:initrd, text()}
          | {:mem, text() | pos_integer()}
          | {:root, text()}
          | {:rootflags, text()}
          | {:rootfstype, text()}
          | :verbose
          | :quiet
          | {:verbose, boolean()}
          | :write
          | {:write, boolean()}
          | {:hostfs, text()}
          | {:env, text(), text()}
          | {:append, text() | [text()]}
          | {:cpu, :any | :auto | non_neg_integer() | [non_neg_integer()]}
          | {:seccomp, boolean()}
          | {:cpus, 1..8}

  @typedoc """
  An option of `create/1`. A keyword list is such a list; bare atoms
  (`:tagged`, `:verbose`, `:quiet`, `:write`) may come before the keywords:
  `Evm.create([:tagged, label: :x])`.
  """
  @type option ::
          {:label, atom() | charlist()}
          | {:dist, atom()}
          | {:init_cmd, String.t() | charlist()}
          | {:progress, (term() -> any())}
          | {:timeout, timeout()}
          | {:console_backlog, pos_integer() | :infinity}
          | {:console_overflow, :hold | :drop}
          | {:owner, pid() | atom() | :none}
          | :tagged
          | {:tagged, boolean()}
          | {:hostname, String.t() | charlist()}
          | {:kernel, :evum | Path.t()}
          | {:transport, :bess | :daemon}
          | {:umid, String.t() | charlist()}
          | {:uml_dir, Path.t()}
          | {:overcommit, boolean()}
          | boot_option()

  @doc """
  Boots a VM and waits until its guest is up. The caller becomes the VM's
  owner: it receives the console lines and is told when the VM ends (see
  `Evum`), and the VM stops when the owner exits.

  Options:

    * `:label` - registers the VM's pid under that name (an atom, or a
      charlist made into one); a label already in use is
      `{:error, {:label_in_use, label}}`.
    * `:dist` - `:busybox` (the default: evum's own initramfs, built on first
      use from the host's static busybox), `:host` (the host's own root,
      read-only over hostfs), or an image of the configuration (`priv/evm.toml`
      and the user's file, see `:evum_config`), downloaded or built on first
      use; each label gets its own copy-on-write disk over the image, kept
      until `destroy/1`. An unknown one is `{:error, {:unknown_dist, dist}}`.
    * `:init_cmd` - a shell command the console runs instead of a login
      shell; the VM halts when it exits.
    * `:progress` - a function called with each step of a download or
      build of the dist's image, or of evum's kernel (`:evum_kernel`).
    * `:timeout` - milliseconds to wait for the boot (the application's
      `boot_timeout`, 30000, by default); `{:error, :boot_timeout}` when it
      passes.
    * `:tagged` - console lines as `{:evum, vm, {:console, line}}` instead of
      bare binaries.
    * `:owner` - the process (a pid or a registered name) that owns the VM
      instead of the caller: it gets the console, and the VM stops when it
      ends; `:none`: the console's lines are dropped (`start_link/1`'s
      default).
    * `:console_backlog` - while the owner has more than this many messages
      waiting (10000 by default), console lines are not delivered, as
      `:console_overflow` says, until it is down to half that; `:infinity`
      delivers always.
    * `:console_overflow` - what happens to the console past the backlog:
      `:hold` (the default) stops reading it, and the guest's writes to it
      wait, as on a terminal nobody reads (nothing is lost; a guest
      printing without end stalls); `:drop` reads on and throws its lines
      away, so the guest never waits: `Evum.info/1` counts them as
      `console_dropped`, and the owner gets
      `{:evum, vm, {:console_dropped, n}}` when lines flow again. Either
      way the owner's mailbox, and the BEAM's memory, stay bounded.
    * `:hostname` - the guest's hostname, `"evm"` by default.
    * `:kernel` - `:evum` (the default, the application's `kernel`): evum's
      own UML kernel, built once per machine (`make deps`, or on first use);
      or the path of any UML binary (Debian's is `"linux"`).
    * `:switch` - an `Evum.Switch` (pid or name) for eth0, its MAC derived
      from the label; a switch that is not running is
      `{:error, {:bad_option, {:switch, switch}}}`.
    * `:net` (or `:location`, as the original) - a named network of the
      configuration (`:home`, `:coffeeshop`, `:library`, `:user` with the
      gateway): its switch, and the next of its addresses, set up on eth0
      once the guest is up (with `/etc/resolv.conf` on a gateway's
      network); an unknown one is `{:error, {:unknown_network, net}}`.
    * `:transport` - how eth0 reaches the `:switch`: `:bess` (the vector
      driver, the default) or `:daemon` (kernels up to 6.15 only).
    * `:umid`, `:uml_dir` - UML's own names for the VM and its directory.
    * `:verbose` - the kernel's boot log on the console.
    * `:cpu` - the host CPUs the VM's processes run on: `:auto` (the
      default: one CPU, the next of those evum may use in turn), `:any`
      (wherever the host scheduler puts them; the default with `cpus: n`
      above 1), or a CPU number or a list of them. A
      UML guest hands control between host processes on every system
      call, which is much cheaper when they share a CPU: a pinned VM is
      faster when it has its CPU to itself, and waits for it when not. A CPU evum may not use is `{:error, {:bad_option, reason}}`.
    * `:seccomp` - `true` runs the guest's processes under a seccomp
      filter instead of ptrace (the kernel's `seccomp=on`; faster, says the
      kernel's help). **For trusted guests only**: the kernel's own help
      calls it insecure with an untrusted userspace, whose processes could
      read and write all of the VM's memory. `false` (ptrace) is the default.
    * `:cpus` - the guest's virtual CPUs, 1 to 8 (`cpu` above is the
      host's). Implies `seccomp: true`, as UML starts SMP only in seccomp
      mode; with `seccomp: false` it is
      `{:error, {:bad_option, {{:cpus, n}, {:seccomp, false}}}}`.
      `:seccomp` and `:cpus` need a kernel that has them (evum's own does,
      Debian's 6.1 does not): on another one the result is
      `{:error, {:unsupported_by_kernel, kernel, :seccomp | :cpus}}`,
      before anything starts.
    * `:overcommit` - `true` lets the VM past the memory admission below
      (`false` by default); its memory still counts against the next VMs.
    * the original boot options: `:mem`, `:con`, `:ssl`, `:disk`, `:ubd`,
      `:eth`, `:init`, `:initrd`, `:root`, `:rootflags`, `:rootfstype`,
      `:write`, `:quiet`, `:hostfs`, `:append`, `:env` (see `t:boot_option/0`).

  An option it does not know, or one with a value of the wrong type, is
  `{:error, {:bad_option, option}}`. So is one out of its bounds, before
  anything starts: `:mem` (MB, or `"128M"`; 64 MB by default) from 20 MB
  to the host's physical memory; a path of `:disk`, `:ubd`, `:initrd`,
  `:hostfs`, `:uml_dir` or `:kernel` empty, longer than 4095 bytes
  (PATH_MAX) or with a NUL; a `:disk`, `:uml_dir` or file of a `:ubd`
  spec with a `,` or `:` (UML's device specs would cut it there). A kernel
  command line over 4095 bytes is `{:error, {:bad_option, why}}`.

  What the host cannot give is named:

    * `{:error, {:insufficient_memory, %{asked: mb, available: mb}}}` - the
      `:mem` of this node's running VMs and this one's would pass the
      host's MemTotal less the `mem_reserve` setting (1024 MB); a guest
      takes memory only as it touches it, so `overcommit: true` lets a VM
      past this.
    * `{:error, {:system_limit, :open_files}}` - the BEAM has too few file
      descriptors left to start a VM (its `ulimit -n`, or the host's).
    * `{:error, {:no_space, path}}` - a file evum writes for the VM (a
      label's copy-on-write disk, a cached image) found its file system
      full.

  Nothing of the VM is left when an error is returned; its label is free.

  A guest that dies before it is up is
  `{:error, {:boot_failed, exit, lines}}`: `exit` as in the owner's
  `{:evum, vm, {:exit, exit}}` message, `lines` the kernel's last console
  lines before it (at most 20, newest last, without a panic's stack dump).
  When they show a host incompatibility evum knows, the result is
  `{:error, {:unsupported_host, problem, fix}}` instead (two strings), and
  the lines go to the logger.

      {:ok, vm} = Evm.create(label: :web, mem: 128, tagged: true)
  """
  @spec create([option()]) :: {:ok, pid()} | {:error, term()}
  defdelegate create(options), to: :evm

  @doc """
  Makes a dist's base image ready ahead of its first boot: downloads or
  builds it into the cache. `{:ok, path}` of the image.
  """
  @spec fetch(atom()) :: {:ok, binary()} | {:error, term()}
  defdelegate fetch(dist), to: :evm

  @doc """
  As `fetch/1`, calling `progress` with each step of the way
  (`{:started, total, resumed_from}`, `{:bytes, done, total}`, `:verifying`,
  `:unpacking`, `{:building, step}`).
  """
  @spec fetch(atom(), (term() -> any())) :: {:ok, binary()} | {:error, term()}
  defdelegate fetch(dist, progress), to: :evm

  @doc """
  Removes a label's copy-on-write disks, so its next boot starts from the
  base image again. `{:error, {:running, label}}` while its VM runs.
  """
  @spec destroy(atom() | String.t() | charlist()) :: :ok | {:error, term()}
  defdelegate destroy(label), to: :evm

  @doc """
  Stops a VM: a sync in the guest, mconsole halt, then SIGTERM, then SIGKILL, waiting for the
  guest to be gone at each step. Returns `:ok` when nothing of it is left
  (its process and runtime directory are gone), `{:error, :not_running}`
  for a VM that is not there (any more).

  Any process may stop a VM; its owner is still sent
  `{:evum, vm, {:exit, how}}`.
  """
  @spec stop(vm()) :: :ok | {:error, :not_running}
  defdelegate stop(vm), to: :evm

  @doc """
  As `create/1`, for a supervisor: the VM is linked to the caller, and its
  console goes to `owner: pid_or_name` if given, nowhere otherwise. A
  `:permanent` child is restarted whatever its end, a `:transient` one only
  after an abnormal exit such as `Process.exit(vm, :kill)` (a guest that
  halts exits `:normal`, one that fails `{:shutdown, how}`).
  """
  @spec start_link([option()]) :: {:ok, pid()} | {:error, term()}
  defdelegate start_link(options), to: :evm

  @doc """
  A child specification for a VM, so that `{Evm, label: :app_vm}` can go in
  a supervisor's children: its id is the label, `:permanent`, 15 s to stop.

      children = [{Evm, label: :app_vm, owner: MyApp.Console}]
      Supervisor.start_link(children, strategy: :one_for_one)
  """
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(options), do: :evm.child_spec(options)
end
