defmodule EvumTest.GatewayTest do
  # User networking from iex: a VM on the `user` network, reached from the
  # host's loopback through a port forward.
  use ExUnit.Case, async: false
  import EvumTest.Helpers

  test "a forward to a guest's listener carries data both ways" do
    vm = create!(net: :user)
    {:ok, 0, _} = Evum.cmd(vm, "setsid nc -ll -p 8080 -e cat </dev/null >/dev/null 2>&1 &")

    {:ok, 0, _} =
      Evum.cmd(
        vm,
        "for i in 1 2 3 4 5 6 7 8 9 10; do netstat -lnt | grep -q ':8080 ' && break; sleep 0.2; done"
      )

    {:ok, port} = Evum.forward(vm, {:tcp, 0, 8080})
    {:ok, socket} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 5_000)
    :ok = :gen_tcp.send(socket, "hello from iex\n")
    assert {:ok, "hello from iex\n"} = :gen_tcp.recv(socket, 0, 10_000)
    :gen_tcp.close(socket)

    assert {:ok, [%{host_port: ^port, guest_port: 8080, connections: 1}]} = Evum.forwards(vm)
    assert Evum.unforward(vm, {:tcp, port}) == :ok
    assert {:error, :econnrefused} = :gen_tcp.connect({127, 0, 0, 1}, port, [], 2_000)
  end
end
