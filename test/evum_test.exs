defmodule EvumTest do
  # Real guests, one at a time: the console, commands and options as a user
  # of the Elixir API sees them.
  use ExUnit.Case, async: false
  import EvumTest.Helpers

  @prompt "root@evm:~# "

  test "Quick Start: boot messages, send, the echo, then the output" do
    vm = create!(label: :ex_quick_start)
    assert Process.whereis(:ex_quick_start) == vm

    # The boot messages come to the owner as binaries, up to the prompt.
    assert_receive line when is_binary(line), 5_000
    wait_line(@prompt)
    flush()

    assert Evum.send(vm, "hostname") == "hostname"
    assert_receive "evm", 5_000
    assert_receive @prompt, 5_000

    # The label names the VM as well as its pid does.
    assert Evum.send(:ex_quick_start, "echo via label") == "echo via label"
    assert_receive "via label", 5_000
  end

  test "cmd returns the exit status and exact output" do
    vm = create!(label: :ex_cmd)

    assert Evum.cmd(vm, "echo hi; exit 3") == {:ok, 3, "hi\n"}
    assert Evum.cmd(vm, "hostname") == {:ok, 0, "evm\n"}
    assert Evum.cmd(vm, "echo out; echo err >&2; false") == {:ok, 1, "out\nerr\n"}
    assert Evum.cmd(vm, "exit 255") == {:ok, 255, ""}

    # Bytes, not lines: no newline added, none taken away, any byte value.
    assert Evum.cmd(vm, "printf 'a\\000b\\377'") == {:ok, 0, <<?a, 0, ?b, 255>>}
    assert Evum.cmd(vm, "echo héllo wörld") == {:ok, 0, "héllo wörld\n"}

    expected = Enum.map_join(1..20_000, &"#{&1}\n")
    assert Evum.cmd(vm, "seq 1 20000") == {:ok, 0, expected}

    # Multi-line scripts, and iodata of every shape.
    assert Evum.cmd(vm, "x=1\nif [ $x = 1 ]; then\n  echo one\nfi") == {:ok, 0, "one\n"}
    assert Evum.cmd(vm, ~c"echo charlist") == {:ok, 0, "charlist\n"}
    assert Evum.cmd(vm, ["echo ", ~c"io", "list"]) == {:ok, 0, "iolist\n"}

    assert Evum.cmd(vm, "sleep 5", 200) == {:error, :timeout}
    assert Evum.cmd(vm, "echo still there") == {:ok, 0, "still there\n"}
  end

  test "cmd options: max_output per call, timeout, bad ones refused" do
    vm = create!(label: :ex_cmd_options)
    five = "head -c 5000000 /dev/zero"

    # Over the 4 MiB default, then allowed by the call, then the default again.
    assert Evum.cmd(vm, five) == {:error, {:output_too_large, 5_000_000}}
    assert {:ok, 0, zeros} = Evum.cmd(vm, five, max_output: 8 * 1024 * 1024, timeout: 60_000)
    assert zeros == :binary.copy(<<0>>, 5_000_000)
    assert Evum.cmd(vm, five, %{timeout: 60_000}) == {:error, {:output_too_large, 5_000_000}}
    assert Evum.cmd(vm, "printf 12345", max_output: 4) == {:error, {:output_too_large, 5}}

    for bad <- [max_output: 16 * 1024 * 1024 + 1, max_output: -1, timeout: -1, size: 3] do
      assert Evum.cmd(vm, "echo no", [bad]) == {:error, {:bad_option, bad}}
    end

    assert Evum.cmd(vm, "echo no", :soon) == {:error, {:bad_option, :soon}}
    assert Evum.cmd(vm, "echo ok", :infinity) == {:ok, 0, "ok\n"}
    assert Evum.cmd(vm, "echo ok", 5_000) == {:ok, 0, "ok\n"}
  end

  test "cmd runs on its own channel: any process may call it, the console stays quiet" do
    vm = create!(label: :ex_cmd_channel)
    wait_line(@prompt)
    flush()

    task = Task.async(fn -> Evum.cmd(vm, "echo from-a-task") end)
    assert Task.await(task) == {:ok, 0, "from-a-task\n"}

    results =
      1..8
      |> Enum.map(fn i -> Task.async(fn -> Evum.cmd(vm, "echo #{i}") end) end)
      |> Enum.map(&Task.await/1)

    assert results == Enum.map(1..8, &{:ok, 0, "#{&1}\n"})
    refute_receive _, 300
  end

  test "puts and write type on the console" do
    # Each line is typed at the prompt: typed before the prompt came, its echo
    # would come on the prompt's line ("root@evm:~# echo put-line").
    vm = create!(label: :ex_console)
    wait_line(@prompt)
    flush()

    assert Evum.puts(vm, "echo put-line") == :ok
    wait_line("echo put-line")
    wait_line("put-line")
    wait_line(@prompt)

    # write/2 adds no newline: the line is typed in pieces.
    assert Evum.write(vm, "echo wr") == :ok
    assert Evum.write(vm, ["it", "e\n"]) == :ok
    wait_line("write")
    wait_line(@prompt)

    # Ctrl-C interrupts what the console shell runs.
    assert Evum.puts(vm, "sleep 100; echo not-interrupted") == :ok
    wait_line("sleep 100; echo not-interrupted")
    Process.sleep(300)
    assert Evum.write(vm, "\x03") == :ok
    # "^C", then the prompt (a line of its own or not): the sleep is over.
    wait_prompt()
    assert Evum.send(vm, "echo interrupted", 5_000) == "echo interrupted"
    assert_receive "interrupted", 5_000
    refute_received "not-interrupted"
  end

  test "tagged: true gives {:evum, vm, {:console, line}} messages" do
    vm = create!(label: :ex_tagged, tagged: true)
    assert_receive {:evum, ^vm, {:console, line}} when is_binary(line), 5_000
    wait_tagged(vm, @prompt)
    flush()

    assert Evum.send(vm, "hostname") == "hostname"
    assert_receive {:evum, ^vm, {:console, "evm"}}, 5_000
    assert_receive {:evum, ^vm, {:console, @prompt}}, 5_000
    {:messages, messages} = Process.info(self(), :messages)
    refute Enum.any?(messages, &is_binary/1)
  end

  test "bare atom options go before the keywords" do
    vm = create!([:tagged, label: :ex_bare_tagged, hostname: "bare"])
    assert_receive {:evum, ^vm, {:console, _}}, 5_000
    assert Evum.cmd(vm, "hostname") == {:ok, 0, "bare\n"}
  end

  test "options: hostname, mem, env, charlist label" do
    vm = create!(label: ~c"ex_options", hostname: "elixir-guest", mem: 96)
    assert Process.whereis(:ex_options) == vm
    assert Evum.cmd(vm, "hostname") == {:ok, 0, "elixir-guest\n"}

    {:ok, 0, meminfo} = Evum.cmd(vm, "head -1 /proc/meminfo")
    [_, kb] = Regex.run(~r/MemTotal:\s+(\d+) kB/, meminfo)
    assert String.to_integer(kb) in 60_000..98_304
  end

  test "info describes the VM" do
    vm = create!(label: :ex_info)
    info = Evum.info(vm)

    assert %{
             os_pid: os_pid,
             umid: umid,
             runtime_dir: dir,
             mconsole_socket: socket,
             running: true,
             owner: owner,
             label: :ex_info,
             phase: :ready
           } = info

    assert owner == self()
    assert is_integer(os_pid) and os_alive?(os_pid)
    assert is_binary(umid) and File.dir?(dir)
    # A jailed VM's runtime directory is a tmpfs in its own mount namespace,
    # which evum reaches through /proc/<os_pid>/root.
    assert String.starts_with?(socket, dir) or
             String.starts_with?(socket, "/proc/#{os_pid}/root#{dir}/")
  end

  test "Evum.start/0 runs the host's own system, read-only" do
    {:ok, vm} = Evum.start()
    cleanup_on_exit(vm, Evum.info(vm))
    # Erlang's `undefined`: no label.
    assert %{label: :undefined, phase: :ready} = Evum.info(vm)

    {:ok, 0, os_release} = Evum.cmd(vm, "cat /etc/os-release")
    assert os_release == File.read!("/etc/os-release")
    assert {:ok, status, _} = Evum.cmd(vm, "touch /evum-must-not-exist")
    assert status != 0
    refute File.exists?("/evum-must-not-exist")
  end

  defp wait_prompt do
    receive do
      line when is_binary(line) ->
        if String.ends_with?(line, @prompt), do: :ok, else: wait_prompt()
    after
      5_000 -> flunk("no prompt")
    end
  end

  defp wait_tagged(vm, want) do
    receive do
      {:evum, ^vm, {:console, ^want}} -> :ok
      {:evum, ^vm, {:console, _}} -> wait_tagged(vm, want)
    after
      10_000 -> flunk("no console line #{inspect(want)}")
    end
  end
end
