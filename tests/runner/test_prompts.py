"""Rows to requests: plain-name templates, system messages, conversation columns, ids."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from aibatch.errors import InputError, UsageError
from aibatch.io.inputs import Batch
from aibatch.jobs.spec import JobSpec
from aibatch.runner.prompts import PromptBuilder, parse_template
from aibatch.types import ChatRequest, Message

MODEL = "test-model"
PATH = "in.csv"


def batch(start: int = 0, lines: list[int] | None = None, **columns: list[Any]) -> Batch:
    return Batch(pa.RecordBatch.from_pydict(columns), start, lines)


def builder(**options: Any) -> PromptBuilder:
    return PromptBuilder(JobSpec(input=PATH, **options), MODEL, PATH)


def user(text: str) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), model=MODEL)


def texts(requests: list[ChatRequest | None]) -> list[str | None]:
    """The last message of each request, or None for a skipped row."""
    return [None if r is None else r.messages[-1].content for r in requests]


def conversation(*pairs: tuple[str, str]) -> str:
    return json.dumps([{"role": role, "content": content} for role, content in pairs])


# parse_template


def test_a_template_splits_into_literals_and_column_names():
    assert parse_template("Translate {text} to {lang}.") == [
        ("Translate ", "text"),
        (" to ", "lang"),
        (".", None),
    ]


def test_doubled_braces_are_literal_braces():
    pieces = parse_template("{{not a field}} {name}")

    assert "".join(literal for literal, _ in pieces) == "{not a field} "
    assert [name for _, name in pieces if name] == ["name"]


def test_a_column_name_may_contain_spaces():
    assert parse_template("{first name}") == [("", "first name")]


def test_a_template_without_fields_is_one_literal():
    assert parse_template("Say hello.") == [("Say hello.", None)]


@pytest.mark.parametrize("template", ["{a.b}", "{a[0]}", "{a!r}", "{a:>5}", "{text.__class__}"])
def test_a_field_that_is_not_a_plain_name_is_a_usage_error_naming_it(template):
    with pytest.raises(UsageError) as caught:
        parse_template(f"Say {template} now")

    message = str(caught.value)
    assert template in message
    assert "not a plain column name" in message
    assert "{column_name}" in message


@pytest.mark.parametrize("template", ["{}", "{ }"])
def test_a_field_without_a_name_is_a_usage_error(template):
    with pytest.raises(UsageError, match="names no column"):
        parse_template(f"Say {template}")


@pytest.mark.parametrize("template", ["{a", "a}", "} {a}", "{a{b}}", "{a!}"])
def test_unbalanced_braces_are_a_usage_error_that_explains_literal_braces(template):
    with pytest.raises(UsageError) as caught:
        parse_template(template)

    assert not isinstance(caught.value, InputError)
    assert repr(template) in str(caught.value)
    assert "write {{ and }} for braces" in str(caught.value)


def test_a_builder_checks_its_template_when_made():
    with pytest.raises(UsageError):
        builder(template="{a.b}")


# requests: the prompt column


def test_each_prompt_becomes_one_user_message_for_the_model():
    requests = builder().requests(batch(prompt=["hi", "there"]))

    assert requests == [user("hi"), user("there")]


def test_an_empty_blank_or_null_prompt_is_skipped_as_none():
    requests = builder().requests(batch(prompt=["a", "", "  \n\t", None, "b"]))

    assert texts(requests) == ["a", None, None, None, "b"]


def test_a_prompt_keeps_its_surrounding_whitespace():
    requests = builder().requests(batch(prompt=["  spaced \n"]))

    assert texts(requests) == ["  spaced \n"]


def test_the_prompt_column_option_picks_the_column():
    requests = builder(prompt_column="question").requests(
        batch(prompt=["wrong"], question=["right"])
    )

    assert texts(requests) == ["right"]


def test_a_prompt_value_that_is_not_text_is_sent_as_text():
    requests = builder().requests(Batch(pa.record_batch({"prompt": pa.array([7, None])}), 0))

    assert texts(requests) == ["7", None]


def test_a_system_message_goes_first():
    (request,) = builder(system="Be brief.").requests(batch(prompt=["hi"]))

    assert request is not None
    assert request.messages == (Message("system", "Be brief."), Message("user", "hi"))


def test_an_empty_system_option_adds_no_message():
    (request,) = builder(system="").requests(batch(prompt=["hi"]))

    assert request == user("hi")


def test_a_skipped_row_gets_no_request_even_with_a_system_message():
    assert builder(system="Be brief.").requests(batch(prompt=[" "])) == [None]


# requests: templates


def test_a_template_fills_in_each_rows_columns():
    requests = builder(template="Translate {text} to {lang}.").requests(
        batch(text=["cat", "dog"], lang=["French", "German"])
    )

    assert texts(requests) == ["Translate cat to French.", "Translate dog to German."]


def test_a_template_renders_a_null_field_as_nothing_when_another_field_has_a_value():
    requests = builder(template="[{a}|{b}]").requests(batch(a=["x", None], b=[None, "y"]))

    assert texts(requests) == ["[x|]", "[|y]"]


def test_a_template_row_whose_fields_are_all_empty_is_skipped():
    requests = builder(template="Translate {text} to {lang}.").requests(
        batch(text=["", None, " "], lang=[None, "", "French"])
    )

    assert texts(requests) == [None, None, "Translate   to French."]


def test_a_template_does_not_interpret_the_values_it_inserts():
    requests = builder(template="{a} and {b}").requests(batch(a=["{b}"], b=["{a.__class__}"]))

    assert texts(requests) == ["{b} and {a.__class__}"]


def test_a_template_keeps_literal_braces():
    requests = builder(template='{{"q": "{q}"}}').requests(batch(q=["hi"]))

    assert texts(requests) == ['{"q": "hi"}']


def test_a_template_may_name_a_column_twice():
    requests = builder(template="{w} {w}").requests(batch(w=["echo"]))

    assert texts(requests) == ["echo echo"]


def test_a_template_without_fields_sends_its_text_for_every_row():
    requests = builder(template="Say hello.").requests(batch(other=["a", None]))

    assert texts(requests) == ["Say hello.", "Say hello."]


def test_a_template_renders_values_that_are_not_text():
    table = pa.record_batch({"n": pa.array([3], pa.int64())})

    requests = builder(template="{n} apples").requests(Batch(table, 0))

    assert texts(requests) == ["3 apples"]


def test_a_template_with_a_system_message_puts_the_system_first():
    (request,) = builder(template="Hi {name}", system="Be kind.").requests(batch(name=["Ann"]))

    assert request is not None
    assert request.messages == (Message("system", "Be kind."), Message("user", "Hi Ann"))


# requests: the messages column


def test_a_messages_cell_of_json_text_becomes_the_conversation():
    cell = conversation(("user", "hi"), ("assistant", "hello"), ("user", "and?"))

    (request,) = builder(messages_column="chat").requests(batch(chat=[cell]))

    assert request == ChatRequest(
        messages=(Message("user", "hi"), Message("assistant", "hello"), Message("user", "and?")),
        model=MODEL,
    )


def test_a_messages_cell_that_is_already_a_list_becomes_the_conversation():
    chat = pa.array(
        [[{"role": "user", "content": "hi"}]],
        pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
    )

    (request,) = builder(messages_column="chat").requests(Batch(pa.record_batch({"chat": chat}), 0))

    assert request == user("hi")


def test_message_content_given_as_parts_is_joined_as_text():
    cell = json.dumps(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look "},
                    {"type": "image_url", "image_url": {"url": "x"}},
                    {"type": "text", "text": "here"},
                ],
            }
        ]
    )

    (request,) = builder(messages_column="chat").requests(batch(chat=[cell]))

    assert request == user("look here")


def test_the_system_option_is_put_before_a_conversation_without_one():
    (request,) = builder(messages_column="chat", system="Be brief.").requests(
        batch(chat=[conversation(("user", "hi"))])
    )

    assert request is not None
    assert request.messages == (Message("system", "Be brief."), Message("user", "hi"))


def test_a_conversation_that_has_a_system_message_keeps_its_own():
    cell = conversation(("system", "Own rules."), ("user", "hi"))

    (request,) = builder(messages_column="chat", system="Be brief.").requests(batch(chat=[cell]))

    assert request is not None
    assert request.messages == (Message("system", "Own rules."), Message("user", "hi"))


@pytest.mark.parametrize(
    "cell",
    [None, "", "[]", conversation(("user", "  ")), json.dumps([{"role": "user"}])],
)
def test_a_conversation_with_nothing_to_say_is_skipped(cell):
    assert builder(messages_column="chat").requests(batch(chat=[cell])) == [None]


def test_messages_that_are_not_json_are_an_input_error_naming_row_line_and_column():
    cells = [conversation(("user", "fine")), "[{not json"]

    with pytest.raises(InputError) as caught:
        builder(messages_column="chat").requests(batch(start=10, lines=[12, 15], chat=cells))

    error = caught.value
    assert (error.path, error.line, error.column) == (PATH, 15, "chat")
    assert "row 11" in error.reason
    assert "not valid JSON" in error.reason


@pytest.mark.parametrize(
    ("cell", "complaint"),
    [
        ('{"role": "user", "content": "hi"}', "JSON list"),
        ('"hi"', "JSON list"),
        ("42", "JSON list"),
        ("null", "JSON list"),
        ('["hi"]', "message 0"),
        ('[{"role": "user", "content": "a"}, {"content": "no role"}]', "message 1"),
        ('[{"role": 5, "content": "a"}]', "message 0"),
    ],
)
def test_messages_of_the_wrong_shape_are_an_input_error(cell, complaint):
    with pytest.raises(InputError) as caught:
        builder(messages_column="chat").requests(batch(lines=[2], chat=[cell]))

    assert caught.value.line == 2
    assert caught.value.column == "chat"
    assert complaint in caught.value.reason


def test_a_bad_messages_cell_of_an_input_without_lines_names_only_the_row():
    with pytest.raises(InputError) as caught:
        builder(messages_column="chat").requests(batch(start=4, chat=['"no"', "[]"]))

    assert caught.value.line is None
    assert "row 4" in caught.value.reason


# ids


def test_without_an_id_column_a_rows_id_is_its_position_in_the_input():
    assert builder().ids(batch(start=5, prompt=["a", "b", "c"])) == ["5", "6", "7"]


def test_the_id_column_gives_each_rows_id_as_text():
    table = pa.record_batch({"prompt": ["a", "b"], "key": pa.array([10, 20], pa.int64())})

    assert builder(id_column="key").ids(Batch(table, 0)) == ["10", "20"]


@pytest.mark.parametrize("missing", [None, ""])
def test_a_row_without_an_id_is_an_input_error_naming_row_line_and_column(missing):
    rows = batch(start=3, lines=[7, 9], prompt=["a", "b"], key=["k1", missing])

    with pytest.raises(InputError) as caught:
        builder(id_column="key").ids(rows)

    error = caught.value
    assert (error.line, error.column) == (9, "key")
    assert "row 4 has no id" in error.reason


# check_columns


def test_check_columns_accepts_an_input_that_has_every_needed_column():
    builder(template="{a} {b}", id_column="id").check_columns(["a", "b", "id", "extra"])


@pytest.mark.parametrize(
    ("options", "missing", "option"),
    [
        ({}, "prompt", "--prompt-column"),
        ({"prompt_column": "question"}, "question", "--prompt-column"),
        ({"template": "{text} in {lang}"}, "lang", "--template"),
        ({"messages_column": "chat"}, "chat", "--messages-column"),
        ({"id_column": "key"}, "key", "--id-column"),
    ],
)
def test_a_missing_column_is_an_input_error_naming_the_option_and_the_columns(
    options, missing, option
):
    columns = [name for name in ["text", "prompt", "question", "body"] if name != missing]

    with pytest.raises(InputError) as caught:
        builder(**options).check_columns(columns)

    message = caught.value.reason
    assert repr(missing) in message
    assert option in message
    assert f"the columns are: {', '.join(columns)}" in message
    assert caught.value.path == PATH


@pytest.mark.parametrize(
    ("header", "option"),
    [
        ("prompt;id", "--delimiter ';'"),
        ("prompt|id|note", "--delimiter '|'"),
        ("prompt\tid", "--delimiter tab"),
        ("prompt,id", "--delimiter ','"),
    ],
)
def test_a_lone_header_name_holding_a_separator_suggests_the_delimiter(header, option):
    with pytest.raises(InputError) as caught:
        builder().check_columns([header])

    assert caught.value.reason.endswith(option)


def test_a_missing_column_that_is_there_in_quotes_suggests_quoting_csv():
    with pytest.raises(InputError) as caught:
        builder().check_columns(['"id"', '"prompt"'])

    assert caught.value.reason.endswith("pass --quoting csv")


def test_needed_columns_lists_the_template_fields_once_then_the_id_column():
    assert builder(template="{b} {a} {b}", id_column="id").needed_columns() == ["b", "a", "id"]


def test_a_messages_column_needs_only_itself():
    assert builder(messages_column="chat").needed_columns() == ["chat"]


# images

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(24))


def image_builder(tmp_path: Any, **options: Any) -> PromptBuilder:
    source = str(tmp_path / "in.csv")
    spec = JobSpec(input=source, image_columns=("pic",), **options)
    return PromptBuilder(spec, MODEL, source)


def test_the_scan_and_the_send_step_key_an_image_request_alike(tmp_path: Any):
    from aibatch.jobs.checkpoint import request_hash

    (tmp_path / "a.png").write_bytes(PNG)
    rows = batch(prompt=["Look."], pic=["a.png"])

    scanned = image_builder(tmp_path).requests(rows)[0]
    loaded = image_builder(tmp_path).requests(rows, load_images=True)[0]

    assert scanned is not None and loaded is not None
    assert scanned.messages[-1].images[0].data is None
    assert request_hash(scanned, "s") == request_hash(loaded, "s")


def test_an_image_gone_by_the_send_step_is_an_input_change(tmp_path: Any):
    from aibatch.errors import InputChanged

    (tmp_path / "a.png").write_bytes(PNG)
    rows = batch(prompt=["Look."], pic=["a.png"])
    image_builder(tmp_path).requests(rows)
    (tmp_path / "a.png").unlink()

    with pytest.raises(InputChanged, match="row 0, column pic: no image file"):
        image_builder(tmp_path).requests(rows, load_images=True)


def test_the_send_step_reads_only_the_images_of_the_rows_it_asks_for(tmp_path: Any):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.png").write_bytes(PNG)
    rows = batch(prompt=["One.", "Two."], pic=["a.png", "b.png"])
    (tmp_path / "a.png").unlink()  # row 0 is not sent again: its image is never read

    first, second = image_builder(tmp_path).requests(rows, load_images=True, only=[1])

    assert first is not None and first.has_images is False
    assert second is not None and second.messages[-1].images[0].data == PNG


def test_images_join_the_last_user_message_of_a_conversation(tmp_path: Any):
    (tmp_path / "a.png").write_bytes(PNG)
    chat = json.dumps(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
         {"role": "user", "content": "What is this?"}]
    )  # fmt: skip
    rows = batch(chat=[chat], pic=["a.png"])

    [request] = image_builder(tmp_path, messages_column="chat").requests(rows)

    assert request is not None
    assert [len(m.images) for m in request.messages] == [0, 0, 1]


# keys: what the scan records of each row


SERVICE = "aichatonline"
SCHEMA = '{"type": "object", "properties": {"a": {"type": "string"}}}'
VARIED = [
    "Hello",
    "",
    "   ",
    None,
    "naïve café, 東京 and 🎉",
    'quotes " and {braces} and a\nline break',
    "x" * 3000,
]


def keyed_one_by_one(b: PromptBuilder, rows: Batch) -> tuple[list[int], list[int], list[bool]]:
    """The keys as a row at a time: each request built whole, then hashed."""
    from aibatch.jobs.checkpoint import request_hash, row_key

    keys, hashes, skipped = [], [], []
    for row_id, request in zip(b.ids(rows), b.requests(rows), strict=True):
        skipped.append(request is None)
        h = 0 if request is None else request_hash(request, SERVICE)
        hashes.append(h)
        keys.append(0 if request is None else row_key(row_id, h))
    return keys, hashes, skipped


@pytest.mark.parametrize(
    ("options", "columns"),
    [
        ({}, {"prompt": VARIED}),
        ({"system": "Réponds brièvement 🇫🇷"}, {"prompt": VARIED}),
        ({"temperature": 0.3, "max_tokens": 20}, {"prompt": VARIED}),
        ({"schema": SCHEMA}, {"prompt": VARIED}),
        (
            {"template": "Q: {q} / {lang}", "system": "S"},
            {"q": VARIED, "lang": ["fr", None, " ", None, "日本語", "", "en"]},
        ),
        (
            {"id_column": "id"},
            {"prompt": VARIED, "id": ["a", "b", "ü", "d d", "5", "6:7", "🎉"]},
        ),
        (
            {"messages_column": "chat", "system": "S"},
            {"chat": [conversation(("user", t or "")) for t in VARIED]},
        ),
    ],
    ids=["plain", "system", "options", "schema", "template", "id-column", "messages"],
)
def test_the_scans_keys_are_those_of_each_request_built_whole(options, columns):
    b = builder(**options)
    rows = batch(start=95, **columns)  # row ids 95 to 101 cross from two digits to three

    keys = b.keys(rows, SERVICE)

    expected_keys, expected_hashes, expected_skipped = keyed_one_by_one(b, rows)
    assert keys.request_hashes.tolist() == expected_hashes
    assert keys.row_keys.tolist() == expected_keys
    assert keys.skipped.tolist() == expected_skipped
    assert any(expected_skipped) and not all(expected_skipped)


@pytest.mark.parametrize(
    ("options", "columns"),
    [
        ({}, {"prompt": VARIED}),
        ({"system": "S", "temperature": 0.3, "schema": SCHEMA}, {"prompt": VARIED}),
        (
            {"id_column": "id"},
            {"prompt": VARIED, "id": ["a", "b", "ü", "d d", "5", "6:7", "🎉"]},
        ),
        (
            {"messages_column": "chat", "system": "S"},
            {"chat": [conversation(("user", t or "")) for t in VARIED]},
        ),
    ],
    ids=["plain", "system-options-schema", "id-column", "messages"],
)
@pytest.mark.parametrize("which", ["in-a-row", "with-gaps"])
def test_the_send_steps_keys_are_the_scans(options, columns, which):
    b = builder(**options)
    rows = batch(start=95, **columns)  # row ids 95 to 101 cross from two digits to three
    scanned = b.keys(rows, SERVICE)
    sendable = [i for i, skipped in enumerate(scanned.skipped.tolist()) if not skipped]
    # in a row: ids 99, 100, 101 (the range crosses a digit); with gaps: 95, 99, 100, 101
    chosen = sendable[-3:] if which == "in-a-row" else sendable
    assert chosen == ([4, 5, 6] if which == "in-a-row" else [0, 4, 5, 6])
    requests = b.requests(rows)

    hashes, keys = b.sent_keys(rows, chosen, [requests[i] for i in chosen], SERVICE)

    assert hashes.tolist() == scanned.request_hashes[chosen].tolist()
    assert keys.tolist() == scanned.row_keys[chosen].tolist()


def test_the_scans_id_hashes_tell_repeated_ids():
    b = builder(id_column="id")

    keys = b.keys(batch(prompt=["a", "b", "c"], id=["x", "y", "x"]), SERVICE)

    assert keys.id_hashes is not None
    first, second, third = keys.id_hashes.tolist()
    assert first == third != second
