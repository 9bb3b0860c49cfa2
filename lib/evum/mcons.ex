defmodule Evum.Mcons do
  @moduledoc """
  The UML management console of a VM: the commands Debian's `uml_mconsole`
  sends, spoken by evum's own client. The Elixir face of the Erlang module
  `:mcons`, with the same functions, arguments and results.

  Each returns `{:ok, text}` or `{:error, text}` as the guest answered, or
  `{:error, reason}` when the guest could not be asked (`:timeout` after 5
  seconds, `:not_running`, `{:not_iodata, command}`, ...). Arguments are
  iodata: strings, charlists, or lists of them.

      iex> Evum.Mcons.version(vm)
      {:ok, "Linux evm 6.1.176 #1 ... x86_64"}
      iex> Evum.Mcons.config(vm, "con0")
      {:ok, "fd:0,fd:1"}
  """

  @typedoc """
  The guest's answer, or why it could not be asked.
  """
  @type reply :: {:ok, binary()} | {:error, binary() | atom() | {atom(), term()}}

  @doc """
  The guest kernel's version (`uname -a` style).
  """
  @spec version(Evm.vm()) :: reply()
  defdelegate version(vm), to: :mcons

  @doc """
  The list of mconsole commands the guest knows.
  """
  @spec help(Evm.vm()) :: reply()
  defdelegate help(vm), to: :mcons

  @doc """
  Halts the guest at once, without running its shutdown. The owner is then
  sent `{:evum, vm, {:exit, how}}`.
  """
  @spec halt(Evm.vm()) :: reply()
  defdelegate halt(vm), to: :mcons

  @doc """
  Reboots the guest at once, without running its shutdown.
  """
  @spec reboot(Evm.vm()) :: reply()
  defdelegate reboot(vm), to: :mcons

  @doc """
  Shows a device's configuration (`config(vm, "con0")`).
  """
  @spec config(Evm.vm(), iodata()) :: reply()
  defdelegate config(vm, device), to: :mcons

  @doc """
  Adds or changes a device (`config(vm, "ubdb", "/tmp/disk.img")`).
  """
  @spec config(Evm.vm(), iodata(), iodata()) :: reply()
  defdelegate config(vm, device, spec), to: :mcons

  @doc """
  Removes a device (`remove(vm, "ubdb")`).
  """
  @spec remove(Evm.vm(), iodata()) :: reply()
  defdelegate remove(vm, device), to: :mcons

  @doc """
  A magic SysRq key, e.g. `sysrq(vm, "m")` for a memory report.
  """
  @spec sysrq(Evm.vm(), iodata()) :: reply()
  defdelegate sysrq(vm, key), to: :mcons

  @doc """
  Ctrl-Alt-Del: init decides what it means.
  """
  @spec cad(Evm.vm()) :: reply()
  defdelegate cad(vm), to: :mcons

  @doc """
  Pauses the guest; `go/1` resumes it.
  """
  @spec stop(Evm.vm()) :: reply()
  defdelegate stop(vm), to: :mcons

  @doc """
  Resumes a guest paused by `stop/1`.
  """
  @spec go(Evm.vm()) :: reply()
  defdelegate go(vm), to: :mcons

  @doc """
  Writes a line to the guest kernel's log. The kernel logs it once a
  newline ends it: `log(vm, "hello\\n")`.
  """
  @spec log(Evm.vm(), iodata()) :: reply()
  defdelegate log(vm, text), to: :mcons

  @doc """
  Reads a file under the guest's /proc (`proc(vm, "meminfo")`).
  """
  @spec proc(Evm.vm(), iodata()) :: reply()
  defdelegate proc(vm, file), to: :mcons

  @doc """
  Sends any mconsole command (`request(vm, "sysrq m")`).
  """
  @spec request(Evm.vm(), iodata()) :: reply()
  defdelegate request(vm, command), to: :mcons
end
