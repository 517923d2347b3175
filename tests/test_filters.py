"""containerd's filter syntax, as a specification: what matches, what does not, and what is refused."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from actors import errdefs
from actors.filters import Filter, FilterSyntaxError, Op, Selector, parse, parse_any


def envelope(topic: str = "/tasks/exit", namespace: str = "default", **event: Any) -> dict[str, Any]:
    return {"timestamp": 1700000000.5, "namespace": namespace, "topic": topic, "event": event}


EXIT_C1 = envelope("/tasks/exit", container_id="c1", id="c1", pid=42, exit_status=137)
CREATE_C2 = envelope("/tasks/create", container_id="c2", pid=43)
OOM_OTHER_NS = envelope("/tasks/oom", namespace="k8s.io", container_id="c1")
CONTAINER_DELETE = envelope("/containers/delete", id="c1")
WEB = {"id": "web1", "namespace": "default", "image": "nginx", "runtime": {"name": "runc"},
       "labels": {"app": "web", "io.example/tier": "front", "empty": ""}}  # fmt: skip
DB = {"id": "db1", "namespace": "default", "image": "busybox", "runtime": {"name": "crun"},
      "labels": {"app": "db"}}  # fmt: skip
BARE = {"id": "bare", "namespace": "default", "runtime": {"name": "runc"}, "labels": {}}


def matching(f: Filter, *objs: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in objs if f.match(o)]


# -- the documented examples ---------------------------------------------------------------------------------


def test_topic_equality_with_a_double_quoted_value() -> None:
    f = parse('topic=="/tasks/exit"')
    assert matching(f, EXIT_C1, CREATE_C2, OOM_OTHER_NS) == [EXIT_C1]


def test_comma_is_and() -> None:
    f = parse('namespace==default,topic~="^/tasks/"')
    assert matching(f, EXIT_C1, CREATE_C2, OOM_OTHER_NS, CONTAINER_DELETE) == [EXIT_C1, CREATE_C2]


def test_event_fields_are_reached_with_a_dotted_path() -> None:
    f = parse("event.container_id==c1")
    assert matching(f, EXIT_C1, CREATE_C2, OOM_OTHER_NS, CONTAINER_DELETE) == [EXIT_C1, OOM_OTHER_NS]


def test_label_equality_on_container_records() -> None:
    assert matching(parse("labels.app==web"), WEB, DB, BARE) == [WEB]


def test_field_without_operator_means_present() -> None:
    assert matching(parse("labels.app"), WEB, DB, BARE) == [WEB, DB]
    assert matching(parse("image"), WEB, DB, BARE) == [WEB, DB]


def test_not_equal_is_true_when_the_field_is_absent() -> None:
    assert matching(parse("image!=busybox"), WEB, DB, BARE) == [WEB, BARE]
    assert matching(parse("labels.app!=db"), WEB, DB, BARE) == [WEB, BARE]


def test_runtime_name_through_a_nested_map() -> None:
    assert matching(parse("runtime.name==crun"), WEB, DB, BARE) == [DB]


# -- operators and semantics ---------------------------------------------------------------------------------


def test_regex_is_unanchored_search() -> None:
    assert parse("topic~=exit").match(EXIT_C1)
    assert parse("topic~=tasks").match(EXIT_C1)
    assert not parse('topic~="^exit"').match(EXIT_C1)
    assert parse('topic~="exit$"').match(EXIT_C1)


def test_equality_is_exact_and_case_sensitive() -> None:
    assert not parse("image==ngin").match(WEB)
    assert not parse("image==NGINX").match(WEB)
    assert parse("image==nginx").match(WEB)


@pytest.mark.parametrize(
    "source", ["labels.missing==x", "labels.missing~=.*", "nothere~=.*", "event.nope==c1"]
)
def test_absent_fields_never_equal_or_match(source: str) -> None:
    assert not parse(source).match(WEB)
    assert not parse(source).match(EXIT_C1)


@pytest.mark.parametrize("source", ["event.pid", "event.pid==42", 'event.pid~="4"', "timestamp", "event"])
def test_non_string_values_count_as_absent(source: str) -> None:
    # containerd cannot filter on pid or exit_status either; a map is not a value.
    assert not parse(source).match(EXIT_C1)


def test_not_equal_on_a_non_string_value_is_true() -> None:
    assert parse("event.pid!=42").match(EXIT_C1)


def test_a_path_through_a_non_map_is_absent() -> None:
    assert not parse("topic.x").match(EXIT_C1)
    assert not parse("event.pid.x==1").match(EXIT_C1)
    assert parse("topic.x!=1").match(EXIT_C1)


def test_an_empty_string_value_is_present() -> None:
    assert parse("labels.empty").match(WEB)
    assert parse('labels.empty==""').match(WEB)
    assert not parse('labels.app==""').match(WEB)


def test_whitespace_between_tokens_is_allowed() -> None:
    assert parse(" namespace == default , topic ~= exit ").match(EXIT_C1)
    assert parse("labels . app==web").match(WEB)


def test_empty_filter_string_matches_everything() -> None:
    f = parse("")
    assert f.matches_all
    assert matching(f, EXIT_C1, WEB, {}) == [EXIT_C1, WEB, {}]


# -- several filters are ORed --------------------------------------------------------------------------------


def test_several_filters_are_ored() -> None:
    f = parse_any(['topic=="/tasks/create"', "namespace==k8s.io"])
    assert matching(f, EXIT_C1, CREATE_C2, OOM_OTHER_NS) == [CREATE_C2, OOM_OTHER_NS]


def test_or_of_ands() -> None:
    f = parse_any(["namespace==default,event.container_id==c2", "namespace==k8s.io,topic~=oom"])
    assert matching(f, EXIT_C1, CREATE_C2, OOM_OTHER_NS) == [CREATE_C2, OOM_OTHER_NS]


def test_no_filters_match_everything() -> None:
    f = parse_any(())
    assert f.matches_all
    assert matching(f, EXIT_C1, WEB, {}) == [EXIT_C1, WEB, {}]


def test_one_empty_alternative_matches_everything() -> None:
    assert parse_any(["namespace==nope", ""]).match(EXIT_C1)


def test_parse_any_refuses_a_bare_string() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="sequence"):
        parse_any("topic==x")


def test_parse_any_refuses_non_string_filters() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="must be a string"):
        parse_any(["topic==x", 3])  # type: ignore[list-item]


def test_parse_any_reports_the_bad_filter_among_good_ones() -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse_any(["topic==x", "namespace=="])
    assert info.value.source == "namespace=="


# -- quoting ---------------------------------------------------------------------------------------------------


def test_quoted_field_names_may_hold_dots_and_slashes() -> None:
    assert parse('labels."io.example/tier"==front').match(WEB)
    assert parse('"labels"."app"').match(WEB)
    assert not parse('labels."io.example/tier"==back').match(WEB)


def test_double_quoted_values_may_hold_commas_spaces_and_escapes() -> None:
    obj = {"v": 'a, b "c"\t\\'}
    assert parse(r'v=="a, b \"c\"\t\\"').match(obj)


@pytest.mark.parametrize(
    ("quoted", "expected"),
    [
        (r'"\x41"', "A"), (r'"\101"', "A"), (r'"\u00e9"', "é"), (r'"\U0001F600"', "\U0001f600"),
        (r'"\n\r\a\b\f\v"', "\n\r\a\b\f\v"), ('"é"', "é"), ('""', ""),
    ],
)  # fmt: skip
def test_go_string_escapes_in_double_quotes(quoted: str, expected: str) -> None:
    (selector,) = parse(f"v=={quoted}").alternatives[0]
    assert selector.value == expected


def test_slash_and_pipe_quote_regular_expressions() -> None:
    assert parse("topic~=/^\\/tasks\\/e/").match(EXIT_C1)
    # Inside |...| the pipe is the quote, so an alternation escapes it.
    assert parse(r"topic~=|^/tasks/(exit\|oom)$|").match(EXIT_C1)
    assert not parse(r"topic~=|^/tasks/(create\|oom)$|").match(EXIT_C1)
    assert parse("topic~=/^(exit|oom)$|tasks/").match(EXIT_C1)


def test_regex_escapes_pass_through_alternative_quotes() -> None:
    (selector,) = parse(r"v~=/\d+\.log\/x/").alternatives[0]
    assert selector.value == r"\d+\.log/x"
    assert parse(r"v~=/\d+\.log/").match({"v": "app-12.log"})
    assert not parse(r"v~=/\d+\.log/").match({"v": "app-x.log"})


def test_regex_value_with_a_comma_needs_quotes() -> None:
    obj = {"v": "a,b"}
    assert parse('v~="a,b"').match(obj)
    assert parse("v~=|a,b|").match(obj)


def test_bare_values_stop_at_comma_and_space() -> None:
    f = parse("image==nginx,labels.app==web")
    assert [s.value for s in f.alternatives[0]] == ["nginx", "web"]


def test_bare_values_may_contain_operators_and_quotes_after_the_first_character() -> None:
    assert parse("v==a=b!c~d").match({"v": "a=b!c~d"})
    assert parse('v==a"b').match({"v": 'a"b'})


# -- syntax errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "position", "reason"),
    [
        ("topic==/tasks/exit", 7, "double-quote it"),
        ("topic!=|x|", 7, "only after '~='"),
        ("topic==", 7, "expected a value"),
        ("topic==,namespace==x", 7, "expected a value"),
        ("topic=x", 5, "expected an operator"),
        ("topic<>x", 5, "expected an operator"),
        ("topic=~x", 5, "expected an operator"),
        ("1topic==x", 0, "expected a field name"),
        ("_topic==x", 0, "expected a field name"),
        ("==x", 0, "expected a field name"),
        ("topic==x,", 9, "found the end"),
        (",topic==x", 0, "expected a field name"),
        ("topic==x,,a", 9, "expected a field name"),
        ("labels.", 7, "found the end"),
        ("labels..app", 7, "expected a field name"),
        ("topic==a b", 9, "expected ',' or the end"),
        ('topic=="x"y', 10, "expected ',' or the end"),
        ('topic=="/tasks', 7, "unterminated"),
        ("topic~=/abc", 7, "unterminated"),
        ('"labels==x', 0, "unterminated"),
        ('topic=="a\nb"', 9, "newline"),
        (r'topic=="\q"', 8, "unknown escape"),
        (r'topic=="\x4"', 8, "hexadecimal"),
        (r'topic=="\400"', 8, "octal"),
        (r'topic=="\uD800"', 8, "not a valid character"),
        ('topic~="["', 7, "invalid regular expression"),
        ("topic~=|(|", 7, "invalid regular expression"),
        ("   ", 3, "expected a field name"),
    ],
)
def test_syntax_errors_are_invalid_argument_with_position_and_reason(
    source: str, position: int, reason: str
) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=reason) as info:
        parse(source)
    err = info.value
    assert isinstance(err, FilterSyntaxError)
    assert err.category == "invalid_argument"
    assert (err.source, err.position) == (source, position)
    assert f"at position {position}" in err.message


def test_syntax_error_survives_pickle() -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse("a==")
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), again.message, again.position) == (FilterSyntaxError, info.value.message, 3)


# -- travelling in messages --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sources",
    [(), ("",), ('topic=="/tasks/exit"',), ('namespace==default,topic~="^/tasks/"', "labels.app"),
     (r"v~=/\d+/", 'labels."a.b"!=c')],
)  # fmt: skip
def test_filters_survive_a_pickle_round_trip(sources: tuple[str, ...]) -> None:
    f = parse_any(sources)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(f, protocol=protocol))
        assert again == f
        assert again.sources == sources
        for obj in (EXIT_C1, CREATE_C2, OOM_OTHER_NS, WEB, DB, BARE, {"v": "123"}):
            assert again.match(obj) == f.match(obj)


def test_a_pickled_filter_names_only_parse_any() -> None:
    # A restricted unpickler needs to admit one function, not the parser's internals.
    data = pickle.dumps(parse('topic~="x",labels.app'))
    assert b"parse_any" in data
    assert b"Selector" not in data and b"_Parser" not in data


def test_equality_and_hash_follow_the_source_strings() -> None:
    assert parse("a==b") == parse_any(["a==b"])
    assert hash(parse("a==b")) == hash(parse_any(["a==b"]))
    assert parse("a==b") != parse("a==c")
    assert parse("a==b") != "a==b"
    assert repr(parse_any(["a", "b==c"])) == "Filter(['a', 'b==c'])"


def test_selector_structure() -> None:
    (conj,) = parse('labels."x.y"==1,image,topic~=/a/').alternatives
    assert [(s.path, s.op) for s in conj] == [
        (("labels", "x.y"), Op.EQUAL), (("image",), Op.PRESENT), (("topic",), Op.MATCHES),
    ]  # fmt: skip
    assert isinstance(conj[2], Selector)
    assert conj[2].pattern is not None and conj[2].pattern.pattern == "a"
