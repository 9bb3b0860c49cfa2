defmodule EvumTest.ApiTest do
  # The Elixir modules are the Erlang ones under other names: the same
  # functions, each with a doc and a spec. No VM needed.
  use ExUnit.Case, async: true

  @modules [{Evm, :evm}, {Evum, :evum}, {Evum.Mcons, :mcons}, {Evum.Switch, :evum_switch}]

  for {elixir, erlang} <- @modules do
    test "#{inspect(elixir)} has the functions of :#{erlang}, documented and specified" do
      elixir = unquote(elixir)
      erlang = unquote(erlang)
      # gen_server callbacks are the Erlang module's own business.
      callbacks = [init: 1, handle_call: 3, handle_cast: 2, handle_info: 2, terminate: 2]

      functions =
        Enum.sort(
          erlang.module_info(:exports) -- [{:module_info, 0}, {:module_info, 1} | callbacks]
        )

      assert Enum.sort(elixir.__info__(:functions)) == functions

      {:docs_v1, _, :elixir, _, %{"en" => moduledoc}, _, docs} = Code.fetch_docs(elixir)
      assert moduledoc =~ ":#{erlang}"

      for {name, arity} <- functions do
        assert [{_, _, _, %{"en" => doc}, _}] =
                 for({{:function, ^name, ^arity}, _, _, _, _} = d <- docs, do: d),
               "#{inspect(elixir)}.#{name}/#{arity} has no doc"

        assert doc != ""
      end

      {:ok, specs} = Code.Typespec.fetch_specs(elixir)
      assert Enum.sort(for {function, _} <- specs, do: function) == functions
    end
  end

  test "the application's environment is src/evum.app.src's" do
    {:ok, [{:application, :evum, props}]} = :file.consult("src/evum.app.src")
    for {key, value} <- props[:env], do: assert(Application.get_env(:evum, key) == value)
    assert Application.get_env(:evum, :kernel) == :evum
    assert Application.get_env(:evum, :busybox) == ~c"/bin/busybox"
    assert Application.get_env(:evum, :cache_dir) == :default
    assert Application.get_env(:evum, :boot_timeout) == 30_000
    assert Application.spec(:evum, :mod) == props[:mod]
    assert Application.spec(:evum, :vsn) == props[:vsn]
  end

  test "the NIF is loaded from the application's priv directory" do
    priv = :code.priv_dir(:evum)
    assert File.exists?(Path.join(priv, "libevum_nif.so"))
    assert is_integer(:evum_nif.effective_uid())
  end
end
