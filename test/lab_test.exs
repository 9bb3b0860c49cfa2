defmodule EvumTest.LabTest do
  # The lab's showcase in Elixir: three guests of the :host dist run
  # distributed Erlang nodes (test/guest/lab.escript) on an evum switch; a
  # partition cuts one away and both sides see :nodedown inside the guests;
  # a heal brings the cluster back.
  use ExUnit.Case, async: false

  @nodes [ex_lab_a: "10.0.8.1", ex_lab_b: "10.0.8.2", ex_lab_c: "10.0.8.3"]

  @tag timeout: 300_000
  test "a partition and a heal, seen by the nodes in the guests" do
    {:ok, switch} = Evum.Switch.start([:anonymous])
    script = File.read!(Path.join(__DIR__, "guest/lab.escript"))
    vms = for {label, address} <- @nodes, do: start_node(switch, label, address, script)
    [a, b, c] = vms
    [na, nb, nc] = for {_, address} <- @nodes, do: "lab@" <> address

    try do
      wait_events(a, [{"nodeup", nb}, {"nodeup", nc}])
      wait_events(b, [{"nodeup", na}, {"nodeup", nc}])

      :ok = Evum.Switch.partition(switch, [[a], [b, c]])
      wait_events(a, [{"nodedown", nb}, {"nodedown", nc}])
      wait_events(c, [{"nodedown", na}])
      refute {"nodedown", nc} in events(b)

      :ok = Evum.Switch.heal(switch)
      wait_events(a, [{"nodeup", nb}, {"nodeup", nc}], 2)
    after
      Enum.each(vms, &Evm.stop/1)
      Evum.Switch.stop(switch)
    end
  end

  defp start_node(switch, label, address, script) do
    {:ok, vm} = Evum.start(label: label, switch: switch, mem: 256, timeout: 60_000)

    {:ok, 0, _} =
      Evum.cmd(vm, "ifconfig eth0 #{address} netmask 255.255.255.0 up && ifconfig lo up")

    {:ok, 0, _} = Evum.cmd(vm, "cat > /tmp/lab.escript <<'EOF'\n" <> script <> "EOF\n")
    peers = for {_, a} <- @nodes, a != address, do: "lab@" <> a

    start =
      "cd /tmp && epmd -daemon && HOME=/tmp nohup escript /tmp/lab.escript lab@#{address} " <>
        "'#{Enum.join(peers, " ")}' >/tmp/lab.log 2>&1 &"

    {:ok, 0, _} = Evum.cmd(vm, start)
    vm
  end

  defp events(vm) do
    case Evum.cmd(vm, "cat /tmp/events 2>/dev/null") do
      {:ok, _, text} ->
        for line <- String.split(text, "\n", trim: true),
            do: List.to_tuple(String.split(line, " ", parts: 2))

      _ ->
        []
    end
  end

  defp wait_events(vm, wanted, times \\ 1, secs \\ 60) do
    seen = events(vm)
    missing = Enum.filter(wanted, fn w -> Enum.count(seen, &(&1 == w)) < times end)

    cond do
      missing == [] ->
        :ok

      secs > 0 ->
        Process.sleep(1000)
        wait_events(vm, wanted, times, secs - 1)

      true ->
        flunk("#{inspect(missing)} not seen; seen: #{inspect(seen)}")
    end
  end
end
