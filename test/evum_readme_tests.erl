%% The README's Erlang shell sessions, typed into a real `erl' as a user
%% would, with what the README shows checked against what the shell
%% prints: the README shows what users see.
%%
%% How a session reads (an indented block with `N> ' prompts):
%% - `N> Expr.' is typed (a `% comment' after it is not);
%% - the lines after it are what the shell prints, in order, each a pattern:
%%   `...' alone stands for any lines, `...' within a line for any text, a
%%   pid for any pid, and a decimal number for any number;
%% - a file the session names under /tmp/evum-* is removed before and after;
%% - `$ Command' before the first prompt starts the shell and is not run;
%%   after a prompt it is a host command: the next line is its input, the
%%   lines after that its output, and a word that is a variable bound in the
%%   session (`Port') is that variable's value.
-module(evum_readme_tests).

-include_lib("eunit/include/eunit.hrl").

-compile([export_all, nowarn_export_all]).

%% A human types the next line once the shell has answered; this waits
%% as long between lines (console output comes a moment after a command).
-define(PAUSE, 700).

readme_test_() ->
    Sessions = sessions(readme()),
    [
        {timeout, 180, {title(Session), fun() -> check(Session) end}}
     || Session <- Sessions
    ].

readme() ->
    Candidates = [
        filename:join([filename:dirname(?FILE), "..", "README.md"]),
        filename:absname("README.md")
    ],
    [File | _] = [C || C <- Candidates, filelib:is_regular(C)],
    {ok, Text} = file:read_file(File),
    Text.

title([{typed, First, _} | _]) -> "README session: " ++ binary_to_list(First).

%%% Reading the README

%% Every indented block with a shell prompt in it, as [{typed, Expr,
%% [Pattern]} | {host, Command, Input, [Pattern]}].
sessions(Text) ->
    Lines = join_blank(binary:split(Text, <<"\n">>, [global])),
    [parse(Block) || Block <- blocks(Lines, [], []), lists:any(fun is_prompt/1, Block)].

%% A blank line between two indented ones is part of their block.
join_blank([<<"    ", _/binary>> = A, <<>>, <<"    ", _/binary>> = B | Rest]) ->
    [A | join_blank([B | Rest])];
join_blank([Line | Rest]) ->
    [Line | join_blank(Rest)];
join_blank([]) ->
    [].

blocks([], [], Acc) ->
    lists:reverse(Acc);
blocks([], Block, Acc) ->
    lists:reverse([lists:reverse(Block) | Acc]);
blocks([<<"    ", Line/binary>> | Rest], Block, Acc) ->
    blocks(Rest, [Line | Block], Acc);
blocks([_ | Rest], [], Acc) ->
    blocks(Rest, [], Acc);
blocks([_ | Rest], Block, Acc) ->
    blocks(Rest, [], [lists:reverse(Block) | Acc]).

is_prompt(Line) -> re:run(Line, "^[0-9]+> ") =/= nomatch.

parse(Block) ->
    %% What comes before the first prompt starts the shell.
    {_, Session} = lists:splitwith(fun(L) -> not is_prompt(L) end, Block),
    parse_items(Session).

parse_items([]) ->
    [];
parse_items([Line | Rest]) ->
    {Shown, Next} = lists:splitwith(fun(L) -> not is_prompt(L) andalso not is_host(L) end, Rest),
    Item =
        case is_host(Line) of
            true ->
                <<"$ ", Command/binary>> = Line,
                [Input | Output] = Shown,
                {host, strip_comment(Command, "#"), Input, Output};
            false ->
                [_, Expr] = binary:split(Line, <<"> ">>),
                {typed, strip_comment(Expr, "%"), Shown}
        end,
    [Item | parse_items(Next)].

is_host(<<"$ ", _/binary>>) -> true;
is_host(_) -> false.

strip_comment(Text, Mark) ->
    [Code | _] = re:split(Text, "\\s+" ++ Mark ++ " ", [{return, binary}]),
    string:trim(Code, trailing).

%%% Running a session

check(Session) ->
    Files = files_written(Session),
    [file:delete(F) || F <- Files],
    try run(Session) after [file:delete(F) || F <- Files] end.

%% The files a session names under /tmp/evum-*: a capture, say, which
%% must not exist before (a capture never overwrites).
files_written(Session) ->
    lists:usort([
        F
     || {typed, Expr, _} <- Session,
        {match, Found} <- [re:run(Expr, "/tmp/evum-[A-Za-z0-9._-]+", [global, {capture, all, list}])],
        [F] <- Found
    ]).

run(Session) ->
    Ebin = filename:dirname(code:which(evm)),
    Port = open_port(
        {spawn_executable, os:find_executable("erl")},
        [{args, ["-pa", Ebin]}, binary, stream, exit_status, stderr_to_stdout]
    ),
    [type(Port, Item) || Item <- Session],
    port_command(Port, "halt().\n"),
    Output = evum_tests:collect_port(Port, <<>>),
    Printed = printed_lines(Output),
    Expected = lists:append([expected(Item) || Item <- Session]),
    ?assertEqual(ok, follows(Expected, Printed), Output).

type(Port, {typed, Expr, _}) ->
    port_command(Port, [Expr, "\n"]),
    timer:sleep(?PAUSE);
type(Port, {host, Command, Input, _}) ->
    %% Run from the shell, so the session's variables are at hand; its
    %% output is printed as the terminal would show it.
    %% The input stays open a while, as a user's terminal does.
    Shell = io_lib:format("(printf '%s\\n' '~s'; sleep 2) | timeout 5 ~s", [Input, Command]),
    Words = [bound_word(W) || W <- string:split(Shell, " ", all)],
    port_command(Port, ["io:put_chars(os:cmd(lists:flatten([", lists:join(", ", Words), "]))).\n"]),
    timer:sleep(?PAUSE).

%% A word of a host command: a session variable's value, or the text.
bound_word(Word) ->
    Text = lists:flatten(Word),
    case re:run(Text, "^[A-Z][A-Za-z0-9_]*$") of
        {match, _} -> ["\" \", integer_to_list(", Text, ")"];
        nomatch -> io_lib:format("~p", [" " ++ Text])
    end.

expected({typed, _, Shown}) -> Shown;
expected({host, _, _, Shown}) -> Shown.

%% The shell's output as lines, without the prompts in front of them.
printed_lines(Output) ->
    [re:replace(L, "^([0-9]+> )+", "", [{return, binary}]) || L <- binary:split(Output, <<"\n">>, [global])].

%% ok when the patterns match lines of Printed in order (`...' lines
%% standing for any run of lines), else what was not found.
follows([], _Printed) ->
    ok;
follows([<<"...">> | Rest], Printed) ->
    follows(Rest, Printed);
follows([Pattern | Rest], Printed) ->
    Re = pattern(Pattern),
    case lists:dropwhile(fun(L) -> re:run(L, Re) =:= nomatch end, Printed) of
        [_ | After] -> follows(Rest, After);
        [] -> {not_shown, Pattern}
    end.

%% A README line as a regular expression: `...' any text, a pid any pid,
%% a number any number; the rest as it is (blanks: any blanks).
pattern(Line) ->
    Parts = re:split(string:trim(Line), "(\\.\\.\\.|<[0-9]+\\.[0-9]+\\.[0-9]+>|[0-9]+\\.[0-9]+)", [{return, binary}]),
    Re = [
        case P of
            <<"...">> -> ".*";
            _ ->
                case re:run(P, "^(<[0-9]+\\.[0-9]+\\.[0-9]+>|[0-9]+\\.[0-9]+)$") of
                    {match, _} when binary_part(P, 0, 1) =:= <<"<">> -> "<[0-9]+\\.[0-9]+\\.[0-9]+>";
                    {match, _} -> "[0-9]+(\\.[0-9]+)?";
                    nomatch -> quote(P)
                end
        end
     || P <- Parts
    ],
    {ok, Compiled} = re:compile(["^\\s*", Re, "\\s*$"]),
    Compiled.

%% Literal text, its runs of blanks any blanks (a terminal shows a tab as
%% spaces).
quote(Text) ->
    Quoted = re:replace(Text, "[][(){}.*+?^$|\\\\]", "\\\\&", [global, {return, binary}]),
    re:replace(Quoted, "\\s+", "\\\\s+", [global, {return, binary}]).
