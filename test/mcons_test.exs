defmodule EvumTest.MconsTest do
  # The management console, on one VM shared by the tests of this module
  # (owned by the module's setup_all process).
  use ExUnit.Case, async: false
  import EvumTest.Helpers

  setup_all do
    %{vm: create!(label: :ex_mcons)}
  end

  test "version names the guest kernel", %{vm: vm} do
    assert {:ok, text} = Evum.Mcons.version(vm)
    {:ok, 0, release} = Evum.cmd(vm, "uname -r")
    assert text =~ String.trim(release)
    assert text =~ "evm"
    assert Evum.system(vm, "version") == {:ok, text}
    assert Evum.Mcons.request(vm, ["vers", ~c"ion"]) == {:ok, text}
    assert Evum.Mcons.version(:ex_mcons) == {:ok, text}
  end

  test "help lists the commands", %{vm: vm} do
    assert {:ok, text} = Evum.Mcons.help(vm)

    for command <- ~w(version halt reboot config remove sysrq cad stop go log proc) do
      assert text =~ command
    end
  end

  test "config shows a device, proc reads the guest's /proc", %{vm: vm} do
    assert {:ok, "fd:0,fd:1"} = Evum.Mcons.config(vm, "con0")
    assert {:ok, uptime} = Evum.Mcons.proc(vm, "uptime")
    assert uptime =~ ~r/^\s*\d+\.\d+ \d+\.\d+\s*$/
    assert {:ok, meminfo} = Evum.Mcons.proc(vm, "meminfo")
    assert meminfo =~ "MemTotal:"
  end

  test "log writes to the guest kernel's log", %{vm: vm} do
    # The kernel logs the text once a newline ends it.
    assert {:ok, _} = Evum.Mcons.log(vm, "hello from elixir\n")
    assert {:ok, 0, dmesg} = Evum.cmd(vm, "dmesg | tail -5")
    assert dmesg =~ "hello from elixir"
  end

  test "sysrq m reports memory", %{vm: vm} do
    assert {:ok, _} = Evum.Mcons.sysrq(vm, "m")
  end

  test "stop pauses the guest, go resumes it", %{vm: vm} do
    assert {:ok, _} = Evum.Mcons.stop(vm)
    assert Evum.cmd(vm, "echo paused", 500) == {:error, :timeout}
    assert {:ok, _} = Evum.Mcons.go(vm)
    assert Evum.cmd(vm, "echo resumed") == {:ok, 0, "resumed\n"}
  end

  test "an unknown command is the guest's {:error, text}", %{vm: vm} do
    assert Evum.Mcons.request(vm, "no-such-command") == {:error, "Unknown command"}
  end

  test "reboot brings the guest back" do
    vm = create!(label: :ex_reboot)
    assert {:ok, 0, _} = Evum.cmd(vm, "touch /tmp/before-reboot")

    assert Evum.reboot(vm) == {:ok, ""}
    # While the guest reboots its commands wait (one it was running is
    # {:error, :rebooted}); afterwards they run again, in a fresh guest.
    assert wait_cmd(vm, "hostname", 30_000) == {:ok, 0, "evm\n"}
    assert Evum.cmd(vm, "test -e /tmp/before-reboot") == {:ok, 1, ""}
    assert %{phase: :ready, running: true} = Evum.info(vm)
    refute_received {:evum, ^vm, {:exit, _}}
  end

  defp wait_cmd(vm, command, timeout) do
    case Evum.cmd(vm, command, 1_000) do
      {:ok, _, _} = result ->
        result

      # Sent before the reboot: cut short by it, or still waiting.
      {:error, reason} when reason in [:timeout, :rebooted] and timeout > 0 ->
        wait_cmd(vm, command, timeout - 1_000)

      other ->
        other
    end
  end
end
