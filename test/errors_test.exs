defmodule EvumTest.ErrorsTest do
  # Bad input is an {:error, _} result, never a crash, and leaves nothing.
  use ExUnit.Case, async: false
  import EvumTest.Helpers

  test "options Evm.create/1 does not know" do
    assert Evm.create(label: :ex_bad, bogus: 1) == {:error, {:bad_option, {:bogus, 1}}}
    assert Evm.create([:nonsense, label: :ex_bad]) == {:error, {:bad_option, :nonsense}}
    assert Evm.create(label: :ex_bad, dist: :nope) == {:error, {:unknown_dist, :nope}}

    assert Evm.create(label: :ex_bad, verbose: :maybe) ==
             {:error, {:bad_option, {:verbose, :maybe}}}

    assert Evm.create([{:ubd, -1, "x"}, label: :ex_bad]) ==
             {:error, {:bad_option, {:ubd, -1, "x"}}}

    assert Evm.create(:not_a_list) == {:error, {:bad_option, :not_a_list}}
    # Labels are atoms, charlists or strings.
    assert Evm.create(label: 42) == {:error, {:bad_option, {:label, 42}}}
    # Values the kernel command line cannot take are refused before a boot.
    assert {:error, {:bad_option, _}} = Evm.create(label: :ex_bad, mem: "lots")
    assert Evm.create(label: :ex_bad, cpu: :fast) == {:error, {:bad_option, {:cpu, :fast}}}
    assert {:error, {:bad_option, why}} = Evm.create(label: :ex_bad, cpu: 4096)
    assert why =~ "CPU 4096 is not one evum may run on"

    assert Process.whereis(:ex_bad) == nil
    refute_received _
  end

  test "options Evum.Switch.start/1 does not know" do
    assert Evum.Switch.start([:anonymous, mtu: 9000]) == {:error, {:bad_option, {:mtu, 9000}}}
    assert Evum.Switch.start([:anonymous, cpu: :fast]) == {:error, {:bad_option, {:cpu, :fast}}}
    assert {:error, {:bad_option, why}} = Evum.Switch.start([:anonymous, cpu: 4096])
    assert why =~ "CPU 4096 is not one evum may run on"

    for us <- [-1, 1001, 2.5, :fast] do
      assert Evum.Switch.start([:anonymous, busy_poll: us]) ==
               {:error, {:bad_option, {:busy_poll, us}}}
    end

    assert Evum.Switch.start(:not_a_list) == {:error, {:bad_option, :not_a_list}}
    refute_received _
  end

  test "a label in use" do
    vm = create!(label: :ex_label_in_use)
    assert Evm.create(label: :ex_label_in_use) == {:error, {:label_in_use, :ex_label_in_use}}
    assert Process.whereis(:ex_label_in_use) == vm
    assert Evum.cmd(vm, "true") == {:ok, 0, ""}
  end

  test "a kernel that is not there" do
    assert {:error, _} = Evm.create(label: :ex_no_kernel, kernel: "/nonexistent/linux")
    assert Process.whereis(:ex_no_kernel) == nil
  end

  test "a boot that takes longer than :timeout" do
    assert Evm.create(label: :ex_boot_timeout, timeout: 1) == {:error, :boot_timeout}
    # The half-booted VM is killed; its messages still come to the caller.
    assert_receive {:evum, vm, {:exit, {:signal, :sigkill}}}, 15_000
    ref = Process.monitor(vm)
    assert_receive {:DOWN, ^ref, :process, ^vm, _}, 5_000
    assert Process.whereis(:ex_boot_timeout) == nil
  end

  test "data that is not iodata" do
    vm = create!(label: :ex_not_iodata)

    assert Evum.send(vm, :hostname) == {:error, {:not_iodata, :hostname}}
    assert Evum.send(vm, ["echo", 300]) == {:error, {:not_iodata, ["echo", 300]}}
    assert Evum.send(vm, 42, 100) == {:error, {:not_iodata, 42}}
    assert Evum.puts(vm, %{}) == {:error, {:not_iodata, %{}}}
    assert Evum.write(vm, nil) == {:error, {:not_iodata, nil}}
    assert Evum.cmd(vm, true) == {:error, {:not_iodata, true}}
    assert Evum.cmd(vm, 1.5, 1_000) == {:error, {:not_iodata, 1.5}}
    assert Evum.system(vm, :version) == {:error, {:not_iodata, :version}}
    assert {:error, {:not_iodata, _}} = Evum.Mcons.request(vm, :version)
    assert {:error, {:not_iodata, _}} = Evum.Mcons.proc(vm, :meminfo)

    # The VM is none the worse for it.
    assert Evum.cmd(vm, "echo fine") == {:ok, 0, "fine\n"}
  end
end
