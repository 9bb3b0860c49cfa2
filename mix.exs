defmodule Mix.Tasks.Compile.EvumNif do
  @shortdoc "Builds evum's NIF (native/build-nif: cargo, then priv/libevum_nif.so)"
  @moduledoc """
  Builds the Rust NIF with `sh native/build-nif`, the same script rebar3
  runs as a pre-compile hook. It builds with cargo and installs the library
  as `priv/libevum_nif.so` in evum's own directory, also when evum is a
  (path) dependency of another project: Mix links or copies that `priv/`
  to where `code:priv_dir(evum)` points, `_build/ENV/lib/evum/priv`.

  Cargo decides what needs rebuilding. `EVUM_NIF_PROFILE=debug` builds a
  debug library, `CARGO_TARGET_DIR` moves cargo's output.
  """
  use Mix.Task.Compiler

  @root Path.dirname(__ENV__.file)

  @impl true
  def run(_args) do
    script = Path.join(@root, "native/build-nif")

    case System.cmd("sh", [script], cd: @root, stderr_to_stdout: true, into: IO.stream()) do
      {_, 0} ->
        drop_stale_app()
        # With `build_embedded: true` Mix copied priv/ before this ran; copy
        # it again so that the new library is in the build too (a symlinked
        # priv/ is left as it is).
        Mix.Project.build_structure()
        {:ok, []}

      {_, status} ->
        Mix.raise("evum: native/build-nif failed (exit status #{status})")
    end
  end

  # Mix writes ebin/evum.app from application/0, which takes its values from
  # src/evum.app.src, but only rewrites it when mix.exs or the modules
  # change: drop an .app older than evum.app.src so that it is written again.
  defp drop_stale_app do
    app = Path.join(Mix.Project.app_path(), "ebin/evum.app")

    if Mix.Utils.stale?([Path.join(@root, "src/evum.app.src")], [app]) do
      File.rm(app)
    end
  end
end

defmodule Evum.MixProject do
  use Mix.Project

  # src/evum.app.src is what rebar3 builds the .app from; Mix builds it from
  # application/0 instead, so take the values from there to keep both equal.
  @app_src Path.join(Path.dirname(__ENV__.file), "src/evum.app.src")
  {:ok, [{:application, :evum, app_props}]} = :file.consult(@app_src)
  @app_props app_props

  def project do
    [
      app: :evum,
      version: to_string(@app_props[:vsn]),
      elixir: "~> 1.14",
      description: to_string(@app_props[:description]),
      compilers: [:evum_nif] ++ Mix.compilers(),
      erlc_paths: ["src"],
      erlc_options: [:debug_info],
      elixirc_paths: ["lib"],
      start_permanent: Mix.env() == :prod,
      deps: []
    ]
  end

  def application do
    [
      mod: @app_props[:mod],
      registered: @app_props[:registered],
      env: @app_props[:env],
      extra_applications: [:logger]
    ]
  end
end
