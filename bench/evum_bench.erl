%% @doc evum benchmarks: boot, console throughput, density (and density1000),
%% the switch, booting from a disk image, the gateway and guest system
%% calls, each against a peer measured in the same run. Each is a module of
%% its own (evum_bench_boot, evum_bench_console, ...), the shared code is in
%% evum_bench_lib; this module runs one of them in its own node. Run them
%% with `sh bench/run' (which compiles bench/*.erl into a temporary
%% directory); see bench/README.md.
%%
%% Every benchmark cleans up what it started: evum VMs are stopped with
%% evm:stop/1, bare UML peers are killed by process group and their uml_dir
%% removed. As a last resort bench/run kills every process group listed in
%% $EVUM_BENCH_TMP/pgids and every UML process whose umid this node chose.
-module(evum_bench).

-export([main/1]).

-define(BENCHMARKS, [boot, console, density, density1000, switch, disk, gateway, syscalls]).

main([Which]) -> main(Which);
main(Which) when is_atom(Which) ->
    Tmp = evum_bench_lib:tmp_base(),
    evum_bench_lib:note_beam_pid(Tmp),
    evum_bench_lib:warn_foreign("before"),
    Result =
        try
            lists:member(Which, ?BENCHMARKS) orelse error({unknown_benchmark, Which}),
            %% The kernel and CPU every figure of this node is measured on.
            evum_bench_lib:setup(),
            Module = list_to_atom("evum_bench_" ++ atom_to_list(Which)),
            Module:run(Tmp)
        catch
            Class:Reason:Stack ->
                io:format("~nFAILED ~p: ~p:~p~n~p~n", [Which, Class, Reason, Stack]),
                failed
        end,
    evum_bench_lib:warn_foreign("after"),
    Code =
        case Result of
            ok -> 0;
            _ -> 1
        end,
    %% Let the output reach stdout before the node halts.
    halt(Code, [{flush, true}]).
