defmodule EvumTest.SupervisionTest do
  # A VM as a child of an Elixir supervisor: `{Evm, opts}`, restarted
  # after a kill, stopped with its supervisor, its console where `owner:`
  # says.
  use ExUnit.Case, async: false
  import EvumTest.Helpers

  test "{Evm, opts} is a supervisor's child: restarted after a kill, gone with the supervisor" do
    children = [{Evm, label: :ex_sup_vm, owner: self()}]
    {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)
    [{:ex_sup_vm, first, :worker, _}] = Supervisor.which_children(sup)
    assert Process.whereis(:ex_sup_vm) == first
    first_info = Evum.info(first)

    # The console comes to the process `owner:` named.
    assert Evum.send(first, "echo to-the-owner") == "echo to-the-owner"
    assert_receive "to-the-owner", 5_000

    Process.exit(first, :kill)
    second = wait_restarted(sup, first)
    assert {:ok, 0, "evm\n"} = Evum.cmd(:ex_sup_vm, "hostname")
    refute os_alive?(first_info.os_pid)

    second_info = Evum.info(second)
    Process.unlink(sup)
    ref = Process.monitor(sup)
    Process.exit(sup, :shutdown)
    assert_receive {:DOWN, ^ref, :process, ^sup, :shutdown}, 30_000
    assert Process.whereis(:ex_sup_vm) == nil
    assert_gone(second_info)
  end

  defp wait_restarted(sup, old, tries \\ 300) do
    case Supervisor.which_children(sup) do
      [{_, new, _, _}] when is_pid(new) and new != old ->
        new

      _ when tries > 0 ->
        Process.sleep(100)
        wait_restarted(sup, old, tries - 1)
    end
  end
end
