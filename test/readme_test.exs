defmodule EvumTest.ReadmeTest do
  # The README's iex session, evaluated line by line as IEx does (with
  # IEx.Helpers, in one process that owns the VM), with what the README
  # shows checked against what is printed. Patterns as in
  # test/evum_readme_tests.erl: `...` alone any lines, within a line any
  # text, a pid any pid.
  use ExUnit.Case, async: false
  import ExUnit.CaptureIO

  # A human types the next line once the last has been answered.
  @pause 700

  test "the README's iex session prints what the README shows" do
    session = iex_session(File.read!(Path.join(__DIR__, "../README.md")))
    assert session != [], "no iex session in the README"

    {printed, _binding} =
      Enum.reduce(session, {"", []}, fn {expr, _shown}, {printed, binding} ->
        Process.sleep(@pause)

        {binding, output} =
          with_io(fn ->
            {result, binding} = Code.eval_string("import IEx.Helpers\n" <> expr, binding)
            IO.puts(inspect(result))
            binding
          end)

        {printed <> output, binding}
      end)

    Evm.stop(:test1)
    expected = Enum.flat_map(session, fn {_, shown} -> shown end)
    assert follows(expected, String.split(printed, "\n")) == :ok, printed
  end

  # The lines of the indented block with `iex>` prompts: [{expr, shown}].
  defp iex_session(readme) do
    readme
    |> String.split("\n")
    |> Enum.drop_while(&(not String.starts_with?(&1, "    iex> ")))
    |> Enum.take_while(&String.starts_with?(&1, "    "))
    |> Enum.map(&String.replace_prefix(&1, "    ", ""))
    |> Enum.chunk_while(
      nil,
      fn
        "iex> " <> expr, nil -> {:cont, {strip_comment(expr), []}}
        "iex> " <> expr, item -> {:cont, finish(item), {strip_comment(expr), []}}
        line, {expr, shown} -> {:cont, {expr, [line | shown]}}
      end,
      fn
        nil -> {:cont, nil}
        item -> {:cont, finish(item), nil}
      end
    )
  end

  defp finish({expr, shown}), do: {expr, Enum.reverse(shown)}

  defp strip_comment(expr), do: expr |> String.split(~r/\s+# /) |> hd() |> String.trim()

  defp follows([], _printed), do: :ok
  defp follows(["..." | rest], printed), do: follows(rest, printed)

  defp follows([pattern | rest], printed) do
    re = pattern(pattern)

    case Enum.drop_while(printed, &(not Regex.match?(re, &1))) do
      [_ | after_it] -> follows(rest, after_it)
      [] -> {:not_shown, pattern}
    end
  end

  defp pattern(line) do
    ~r/(\.\.\.|#PID<[0-9.]+>)/
    |> Regex.split(String.trim(line), include_captures: true)
    |> Enum.map_join(fn
      "..." -> ".*"
      "#PID<" <> _ -> "#PID<[0-9.]+>"
      text -> text |> Regex.escape() |> String.replace(~r/(\\ |\s)+/, "\\s+")
    end)
    |> then(&Regex.compile!("^\\s*" <> &1 <> "\\s*$"))
  end
end
