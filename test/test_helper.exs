# The tests boot real User-Mode Linux guests (the `linux` binary of Debian's
# user-mode-linux) through the real NIF, one at a time.
ExUnit.start(timeout: 120_000)

defmodule EvumTest.Helpers do
  @moduledoc false
  import ExUnit.Assertions

  @boot_timeout 60_000

  @doc """
  Creates a VM owned by the caller and, when the test ends, stops it and
  checks that nothing of it is left: no process of it, no runtime directory.
  """
  def create!(options) do
    {:ok, vm} = Evm.create([{:timeout, @boot_timeout} | options])
    cleanup_on_exit(vm, Evum.info(vm))
    vm
  end

  @doc "On test exit: stop the VM (whoever owns it), then check it is gone."
  def cleanup_on_exit(vm, info) do
    ExUnit.Callbacks.on_exit(fn ->
      assert Evm.stop(vm) in [:ok, {:error, :not_running}]
      assert_gone(info)
    end)
  end

  @doc "Receives and drops every message already in the mailbox."
  def flush do
    receive do
      _ -> flush()
    after
      0 -> :ok
    end
  end

  @doc "Receives console lines (bare binaries) until `want` arrives."
  def wait_line(want, timeout \\ 10_000) do
    receive do
      ^want -> :ok
      line when is_binary(line) -> wait_line(want, timeout)
    after
      timeout -> flunk("no console line #{inspect(want)}")
    end
  end

  @doc """
  Waits until no live process of the VM is left (the UML process and its
  children: its process group, and anything with its umid on the command
  line; zombies do not count) and its runtime directory is gone.
  """
  def assert_gone(%{os_pid: os_pid, umid: umid, runtime_dir: dir}, timeout \\ 10_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    wait_gone(os_pid, umid, dir, deadline)
  end

  defp wait_gone(os_pid, umid, dir, deadline) do
    left = vm_processes(os_pid, umid)
    dir? = File.exists?(dir)

    cond do
      left == [] and not dir? ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        flunk("VM #{umid} left behind processes #{inspect(left)}, runtime dir: #{dir?}")

      true ->
        Process.sleep(50)
        wait_gone(os_pid, umid, dir, deadline)
    end
  end

  @doc "The live (not zombie) OS processes of a VM."
  def vm_processes(os_pid, umid) do
    for proc <- Path.wildcard("/proc/[0-9]*"),
        pid = String.to_integer(Path.basename(proc)),
        {state, pgrp} <- [stat(proc)],
        state not in [nil, "Z"],
        pid == os_pid or pgrp == os_pid or umid_of(proc) == umid,
        do: pid
  end

  @doc "Whether an OS process is alive: it exists and is no zombie."
  def os_alive?(os_pid) do
    {state, _} = stat("/proc/#{os_pid}")
    state not in [nil, "Z"]
  end

  # The state and process group in /proc/PID/stat, after the command name
  # in parentheses (which may itself hold ") ").
  defp stat(proc) do
    with {:ok, stat} <- File.read(Path.join(proc, "stat")),
         [_ | _] = matches <- :binary.matches(stat, ") "),
         {at, len} = List.last(matches),
         after_comm = binary_part(stat, at + len, byte_size(stat) - at - len),
         [state, _ppid, pgrp | _] <- String.split(after_comm, " "),
         {pgrp, ""} <- Integer.parse(pgrp) do
      {state, pgrp}
    else
      _ -> {nil, nil}
    end
  end

  defp umid_of(proc) do
    case File.read(Path.join(proc, "cmdline")) do
      {:ok, cmdline} ->
        Enum.find_value(String.split(cmdline, <<0>>), fn
          "umid=" <> umid -> umid
          _ -> nil
        end)

      _ ->
        nil
    end
  end
end
