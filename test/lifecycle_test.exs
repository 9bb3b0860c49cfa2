defmodule EvumTest.LifecycleTest do
  # Every way a VM ends, and that nothing of it is left afterwards.
  use ExUnit.Case, async: false
  import EvumTest.Helpers

  test "Evm.stop/1 returns :ok once nothing of the VM is left" do
    vm = create!(label: :ex_stop)
    info = Evum.info(vm)
    assert File.dir?(info.runtime_dir)
    ref = Process.monitor(vm)

    assert Evm.stop(vm) == :ok
    refute File.exists?(info.runtime_dir)
    refute os_alive?(info.os_pid)
    assert_gone(info)

    assert_receive {:evum, ^vm, {:exit, {:exit_status, 0}}}, 5_000
    assert_receive {:DOWN, ^ref, :process, ^vm, :normal}, 5_000
    refute_received {:evum, ^vm, {:exit, _}}

    # The label is free again.
    assert Process.whereis(:ex_stop) == nil
    vm2 = create!(label: :ex_stop)
    assert vm2 != vm
    assert Evum.stop(:ex_stop) == :ok
  end

  test "the VM stops when its owner exits" do
    {owner, vm, info} = spawn_owner(:ex_owner_exits)
    ref = Process.monitor(vm)

    send(owner, :exit)
    assert_receive {:DOWN, ^ref, :process, ^vm, _}, 15_000
    assert_gone(info)
  end

  test "the VM stops when its owner is killed" do
    {owner, vm, info} = spawn_owner(:ex_owner_killed)
    ref = Process.monitor(vm)

    Process.exit(owner, :kill)
    assert_receive {:DOWN, ^ref, :process, ^vm, _}, 15_000
    assert_gone(info)
  end

  test "killing the VM's process kills the guest" do
    vm = create!(label: :ex_killed)
    info = Evum.info(vm)
    ref = Process.monitor(vm)

    Process.exit(vm, :kill)
    assert_receive {:DOWN, ^ref, :process, ^vm, :killed}
    assert_gone(info)
    assert Evum.cmd(vm, "true") == {:error, :not_running}
  end

  test "the guest ends when its console shell exits" do
    vm = create!(label: :ex_shell_exit)
    info = Evum.info(vm)
    ref = Process.monitor(vm)

    assert Evum.puts(vm, "exit") == :ok
    assert_receive {:evum, ^vm, {:exit, {:exit_status, 0}}}, 15_000
    assert_receive {:DOWN, ^ref, :process, ^vm, _}, 5_000
    assert_gone(info)
  end

  test "mcons halt ends the guest at once; the owner hears how" do
    vm = create!(label: :ex_halt, tagged: true)
    info = Evum.info(vm)

    assert Evum.Mcons.halt(vm) == {:ok, ""}
    assert_receive {:evum, ^vm, {:exit, {:exit_status, 0}}}, 15_000
    assert_gone(info)
  end

  test "a stopped VM answers {:error, :not_running}" do
    vm = create!(label: :ex_not_running)
    ref = Process.monitor(vm)
    assert Evm.stop(vm) == :ok
    assert_receive {:DOWN, ^ref, :process, ^vm, _}, 5_000

    for target <- [vm, :ex_not_running] do
      assert Evum.send(target, "hostname") == {:error, :not_running}
      assert Evum.puts(target, "hostname") == {:error, :not_running}
      assert Evum.write(target, "x") == {:error, :not_running}
      assert Evum.cmd(target, "hostname") == {:error, :not_running}
      assert Evum.system(target, "version") == {:error, :not_running}
      assert Evum.reboot(target) == {:error, :not_running}
      assert Evum.info(target) == {:error, :not_running}
      assert Evum.Mcons.version(target) == {:error, :not_running}
      assert Evm.stop(target) == {:error, :not_running}
      assert Evum.stop(target) == {:error, :not_running}
    end
  end

  # A process that creates a VM, reports it, and waits to be told to exit.
  defp spawn_owner(label) do
    parent = self()

    owner =
      spawn(fn ->
        {:ok, vm} = Evm.create(label: label, timeout: 60_000)
        send(parent, {:created, vm, Evum.info(vm)})

        receive do
          :exit -> :ok
        end
      end)

    assert_receive {:created, vm, info}, 60_000
    cleanup_on_exit(vm, info)
    assert Evum.info(vm).owner == owner
    {owner, vm, info}
  end
end
