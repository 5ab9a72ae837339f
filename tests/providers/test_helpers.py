"""format_prompt and get_random_string, exactly as PROTOCOL.md describes them."""

from __future__ import annotations

import string
from collections import Counter

import pytest

from aibatch.providers.helpers import format_prompt, get_random_string

ALPHABET = frozenset(string.ascii_lowercase + string.digits)


# format_prompt: the two examples of PROTOCOL.md


def test_a_single_user_message_is_sent_as_its_content():
    assert format_prompt([{"role": "user", "content": "Hi"}]) == "Hi"


def test_a_system_and_a_user_message_become_role_lines_ending_in_assistant():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]

    assert format_prompt(messages) == "System: Be brief.\nUser: Hi\nAssistant:"


# format_prompt: one message


def test_a_single_message_keeps_its_whitespace_and_newlines_unchanged():
    content = "  two\nlines, trailing space \n"

    assert format_prompt([{"role": "user", "content": content}]) == content


def test_a_single_message_gets_no_role_prefix_whatever_its_role():
    assert format_prompt([{"role": "assistant", "content": "Earlier answer"}]) == "Earlier answer"


def test_a_single_system_message_is_kept_even_when_system_is_excluded():
    # Rule 1 comes before rule 2: one message is returned as is.
    messages = [{"role": "system", "content": "Be brief."}]

    assert format_prompt(messages, include_system=False) == "Be brief."


def test_a_single_message_with_do_continue_is_still_its_content():
    assert format_prompt([{"role": "user", "content": "Hi"}], do_continue=True) == "Hi"


def test_no_messages_give_an_empty_prompt():
    assert format_prompt([]) == ""


# format_prompt: the role-prefixed form


def test_special_tokens_give_one_message_a_role_prefix_and_assistant_cue():
    messages = [{"role": "user", "content": "Hi"}]

    assert format_prompt(messages, add_special_tokens=True) == "User: Hi\nAssistant:"


def test_do_continue_leaves_off_the_assistant_cue():
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]

    assert format_prompt(messages, do_continue=True) == "User: Hi\nAssistant: Hello"


def test_special_tokens_and_do_continue_together_give_bare_role_lines():
    messages = [{"role": "user", "content": "Hi"}]

    assert format_prompt(messages, add_special_tokens=True, do_continue=True) == "User: Hi"


def test_a_conversation_keeps_message_order_and_capitalizes_roles():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "USER", "content": "U2"},
        {"role": "tool", "content": "T"},
    ]

    assert format_prompt(messages) == (
        "System: S\nUser: U1\nAssistant: A1\nUser: U2\nTool: T\nAssistant:"
    )


def test_excluding_system_drops_system_and_developer_messages():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use JSON."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]

    assert format_prompt(messages, include_system=False) == "User: Hi\nAssistant: Hello\nAssistant:"


def test_including_system_keeps_developer_messages_too():
    messages = [
        {"role": "developer", "content": "Use JSON."},
        {"role": "user", "content": "Hi"},
    ]

    assert format_prompt(messages) == "Developer: Use JSON.\nUser: Hi\nAssistant:"


@pytest.mark.parametrize("blank", ["", "   ", "\n\t ", None, [], {}])
def test_messages_with_blank_content_are_skipped(blank):
    messages = [
        {"role": "system", "content": blank},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": blank},
    ]

    assert format_prompt(messages) == "User: Hi\nAssistant:"


def test_content_inside_a_conversation_is_not_stripped():
    messages = [
        {"role": "user", "content": "  padded  "},
        {"role": "assistant", "content": "multi\nline"},
    ]

    assert format_prompt(messages) == "User:   padded  \nAssistant: multi\nline\nAssistant:"


# format_prompt: content that is not a string


def test_none_content_of_a_single_message_becomes_empty_text():
    assert format_prompt([{"role": "user", "content": None}]) == ""


def test_dict_content_becomes_its_text():
    assert format_prompt([{"role": "user", "content": {"text": "from a dict"}}]) == "from a dict"


def test_dict_content_without_text_becomes_empty_text():
    assert format_prompt([{"role": "user", "content": {"name": "file.txt"}}]) == ""


def test_list_content_joins_the_text_of_its_text_parts():
    parts = [
        {"type": "text", "text": "Look "},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}},
        {"text": "at "},
        {"type": "input_audio", "text": "ignored"},
        {"type": "text", "text": "this"},
    ]

    assert format_prompt([{"role": "user", "content": parts}]) == "Look at this"


def test_list_parts_without_type_count_as_text():
    parts = [{"text": "a"}, {"text": "b"}]

    assert format_prompt([{"role": "user", "content": parts}]) == "ab"


def test_list_content_with_only_other_parts_makes_the_message_blank():
    messages = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "user", "content": "Hi"},
    ]

    assert format_prompt(messages) == "User: Hi\nAssistant:"


@pytest.mark.parametrize(("value", "text"), [(42, "42"), (1.5, "1.5"), (True, "True")])
def test_other_content_values_become_their_str(value, text):
    assert format_prompt([{"role": "user", "content": value}]) == text


def test_non_string_content_in_a_conversation_is_turned_into_text():
    messages = [
        {"role": "system", "content": {"text": "Be brief."}},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": 7},
    ]

    assert format_prompt(messages) == "System: Be brief.\nUser: Hi\nAssistant: 7\nAssistant:"


# get_random_string


def test_a_random_string_has_ten_characters_by_default():
    assert len(get_random_string()) == 10


@pytest.mark.parametrize("length", [0, 1, 7, 32, 1000])
def test_a_random_string_has_the_length_asked_for(length):
    assert len(get_random_string(length)) == length


def test_a_random_string_uses_lowercase_letters_and_digits_only():
    assert set(get_random_string(5000)) <= ALPHABET


def test_random_strings_draw_every_character_about_equally_often():
    counts = Counter(get_random_string(36_000))

    # Each of the 36 characters is expected 1000 times with a standard deviation of
    # about 31; 200 is over six of them, so a fair draw fails this about never.
    assert set(counts) == ALPHABET
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_two_random_strings_differ():
    assert get_random_string() != get_random_string()
