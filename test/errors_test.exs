defmodule EvumTest.ErrorsTest do
  # Bad input is an {:error, _} result, never a crash, and leaves nothing.
  use ExUnit.Case, async: false
  import EvumTest.Helpers
  import ExUnit.CaptureLog

  # Debian's UML 6.1: neither seccomp mode nor SMP.
  @debian_kernel "/usr/bin/linux"

  # A kernel with seccomp and SMP: the application's (evum's own by default).
  defp kernel do
    case Application.get_env(:evum, :kernel, :evum) do
      :evum ->
        {:ok, path} = :evum_kernel.ensure()
        path

      k ->
        k
    end
  end

  test "options Evm.create/1 does not know" do
    assert Evm.create(label: :ex_bad, bogus: 1) == {:error, {:bad_option, {:bogus, 1}}}
    assert Evm.create([:nonsense, label: :ex_bad]) == {:error, {:bad_option, :nonsense}}
    assert Evm.create(label: :ex_bad, dist: :nope) == {:error, {:unknown_dist, :nope}}

    assert Evm.create(label: :ex_bad, verbose: :maybe) ==
             {:error, {:bad_option, {:verbose, :maybe}}}

    assert Evm.create([{:ubd, -1, "x"}, label: :ex_bad]) ==
             {:error, {:bad_option, {:ubd, -1, "x"}}}

    assert Evm.create(:not_a_list) == {:error, {:bad_option, :not_a_list}}

    assert Evm.create(label: :ex_bad, console_overflow: :block) ==
             {:error, {:bad_option, {:console_overflow, :block}}}

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

  test "mem outside what boots and what the host has, and paths UML would cut" do
    host = :evum_mem.host_mb()

    for mem <- [10, 19, host + 1, 1.5, "5M", "100000G"] do
      assert Evm.create(label: :ex_limits, mem: mem) == {:error, {:bad_option, {:mem, mem}}}
    end

    for bad <- [
          disk: "/tmp/a,b.img",
          disk: "/tmp/a:b.img",
          disk: "/" <> String.duplicate("x", 4095),
          initrd: "/tmp/a\0b",
          uml_dir: "/tmp/a,b",
          overcommit: :yes
        ] do
      assert Evm.create([bad, label: :ex_limits]) == {:error, {:bad_option, bad}}
    end

    assert Process.whereis(:ex_limits) == nil
    refute_received _
  end

  test "memory the host cannot give, unless overcommitted" do
    committed = :evum_mem.committed()
    available = :evum_mem.limit_mb() - committed
    host = :evum_mem.host_mb()

    assert Evm.create(label: :ex_limits, mem: host) ==
             {:error, {:insufficient_memory, %{asked: host, available: available}}}

    assert Process.whereis(:ex_limits) == nil
    refute_received _

    vm = create!(label: :ex_limits, mem: host, overcommit: true)
    assert :evum_mem.committed() == committed + host
    assert Evum.cmd(vm, "echo up") == {:ok, 0, "up\n"}
    # Released when the VM is gone: evm:stop/1 returns after that.
    assert Evm.stop(vm) == :ok
    assert :evum_mem.committed() == committed
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

  test "seccomp: and cpus: values that are not theirs" do
    for bad <- [cpus: 0, cpus: 9, cpus: :two, seccomp: :maybe] do
      assert Evm.create([bad, label: :ex_bad]) == {:error, {:bad_option, bad}}
    end

    # SMP UML runs only in seccomp mode: the two contradict each other.
    assert Evm.create(label: :ex_bad, cpus: 2, seccomp: false) ==
             {:error, {:bad_option, {{:cpus, 2}, {:seccomp, false}}}}

    assert Process.whereis(:ex_bad) == nil
    refute_received _
  end

  test "seccomp: and cpus: on a kernel without them" do
    if File.exists?(@debian_kernel) do
      assert Evm.create(label: :ex_old, kernel: @debian_kernel, seccomp: true) ==
               {:error, {:unsupported_by_kernel, @debian_kernel, :seccomp}}

      assert Evm.create(label: :ex_old, kernel: @debian_kernel, cpus: 2) ==
               {:error, {:unsupported_by_kernel, @debian_kernel, :cpus}}

      # Refused before anything started: no VM, no message.
      assert Process.whereis(:ex_old) == nil
      refute_receive _, 200
    else
      IO.puts("skipped: no UML kernel at #{@debian_kernel}")
    end
  end

  test "a boot that fails says why" do
    # No init in the initramfs, none in the (empty tmpfs) root either:
    # the kernel panics.
    assert {:error, {:boot_failed, {:signal, :sigabrt}, lines}} =
             Evm.create(label: :ex_panic, kernel: kernel(), append: "rdinit=/nonexistent")

    assert Enum.any?(lines, &(&1 =~ "Kernel panic - not syncing: Requested init /init failed"))
    assert length(lines) <= 20
    # The owner hears of the exit as ever.
    assert_receive {:evum, _vm, {:exit, {:signal, :sigabrt}}}, 15_000
    assert Process.whereis(:ex_panic) == nil
  end

  @tag :tmp_dir
  test "a boot that fails on a known host problem names it and its fix", %{tmp_dir: dir} do
    # A script plays Debian's 6.1 on an AMX host: the line, then an abort.
    fake = Path.join(dir, "linux")

    File.write!(fake, """
    #!/bin/sh
    echo 'userspace - ptrace set fp regs failed, errno = 14'
    kill -ABRT $$
    """)

    File.chmod!(fake, 0o755)

    log =
      capture_log(fn ->
        assert {:error, {:unsupported_host, problem, fix}} = Evm.create(kernel: fake)
        assert problem =~ "XSAVE"
        assert fix =~ "evum's own kernel"
      end)

    # The kernel's own lines are in the log.
    assert log =~ "ptrace set fp regs failed, errno = 14"
    assert_receive {:evum, _vm, {:exit, {:signal, :sigabrt}}}, 15_000
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
