"""Chat templates rendered like TGI's router (minijinja semantics), without sockets."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from tgi_async.api.chat_template import ChatTemplate, ChatTemplateError, select_template
from tgi_async.api.openai_requests import DEFAULT_TOOL_PROMPT, ChatRequest, Message, Tool
from tgi_async.tiny_model import CHAT_TEMPLATE


def messages(*items: dict) -> list[Message]:
    return ChatRequest.model_validate({"messages": list(items)}).messages


CHATML = ChatTemplate(CHAT_TEMPLATE, bos_token="<s>", eos_token="</s>")


def test_tiny_model_template_renders_chatml_with_generation_prompt() -> None:
    text = CHATML.apply(
        messages({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    )
    assert text == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tokenizer_template_is_read_from_the_model_directory(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    template = ChatTemplate.from_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert template is not None
    assert (template.bos_token, template.eos_token) == ("<s>", "</s>")
    assert template.apply(messages({"role": "user", "content": "x"})) == CHATML.apply(
        messages({"role": "user", "content": "x"})
    )


def test_no_template_and_named_templates() -> None:
    class NoTemplate:
        chat_template = None
        bos_token = "<s>"

    assert ChatTemplate.from_tokenizer(NoTemplate()) is None
    assert select_template({"default": "A", "tool_use": "B"}) == "A"
    assert (
        select_template([{"name": "tool_use", "template": "B"}, {"name": "default", "template": "A"}]) == "A"
    )
    assert select_template({"tool_use": "B"}) is None


def test_content_parts_are_joined_and_images_become_markdown() -> None:
    text = CHATML.apply(
        messages(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is "},
                    {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                    {"type": "text", "text": "?"},
                ],
            }
        )
    )
    assert "<|im_start|>user\nWhat is ![](https://x/cat.png)?<|im_end|>" in text


def test_final_assistant_message_is_continued_not_closed() -> None:
    text = CHATML.apply(
        messages({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, I am  "})
    )
    assert text.endswith("<|im_start|>assistant\nHello, I am")


def test_tool_call_messages_render_as_tgi_json() -> None:
    conversation = messages(
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "0", "type": "function", "function": {"name": "get", "arguments": {"c": "Paris"}}}
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "0"},
    )
    text = CHATML.apply(conversation)
    expected = (
        '[{"id":"0","type":"function","function":{"description":null,"name":"get",'
        '"arguments":"{\\"c\\":\\"Paris\\"}"}}]'
    )
    assert f"<|im_start|>assistant\n{expected}<|im_end|>" in text
    assert "<|im_start|>tool\nsunny<|im_end|>" in text


def test_values_print_like_minijinja() -> None:
    template = ChatTemplate(
        "{{ bos_token }}|{{ true }}|{{ false }}|{{ missing }}|{{ {'k': \"<a&b>'\"}|tojson }}"
    )
    assert template.apply(messages({"role": "user", "content": "x"})) == (
        'none|true|false||{"k":"\\u003ca\\u0026b\\u003e\\u0027"}'
    )


def test_no_trim_blocks_like_minijinja() -> None:
    template = ChatTemplate("{% for m in messages %}\n{{ m.content }}\n{% endfor %}")
    assert template.apply(messages({"role": "user", "content": "a"})) == "\na\n"


def test_raise_exception_is_a_template_error_with_tgi_message() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}"
        "{% endif %}ok"
    )
    with pytest.raises(ChatTemplateError) as info:
        template.apply(messages({"role": "system", "content": "x"}))
    assert info.value.error_type == "template_error"
    assert (
        str(info.value) == "Template error: syntax error: Conversation must start with user (in <string>:1)"
    )


def test_broken_template_answers_errors_on_use() -> None:
    template = ChatTemplate("{% for %}")
    with pytest.raises(ChatTemplateError) as info:
        template.apply(messages({"role": "user", "content": "x"}))
    assert str(info.value).startswith("Template error: syntax error: ")


def test_undefined_attribute_reports_its_line() -> None:
    template = ChatTemplate("line one\n{{ messages[0].nope.deeper }}")
    with pytest.raises(ChatTemplateError) as info:
        template.apply(messages({"role": "user", "content": "x"}))
    assert str(info.value).startswith("Template error: undefined value: ")
    assert str(info.value).endswith("(in <string>:2)")


def test_tgi_template_fixups_and_helpers() -> None:
    template = ChatTemplate(
        "{% generation %}{{ messages[0]['content'][0]['text'] }}{% endgeneration %}"
        "{% for m in messages[::-1] %}{{ m.role }}{% endfor %}{{ strftime_now('%Y') }}"
    )
    text = template.apply(messages({"role": "system", "content": "S"}, {"role": "user", "content": "U"}))
    assert text == f"Susersystem{datetime.datetime.now().year}"


def test_tools_are_appended_when_the_template_ignores_them() -> None:
    tools = [
        Tool.model_validate({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})
    ]
    text = CHATML.apply(messages({"role": "user", "content": "Hi"}), (tools, DEFAULT_TOOL_PROMPT))
    tool_json = (
        '[{"type":"function","function":{"description":null,"name":"f",'
        '"arguments":"{\\"type\\":\\"object\\"}"}}]'
    )
    assert f"<|im_start|>user\nHi\n---\n{tool_json}\n{DEFAULT_TOOL_PROMPT}<|im_end|>" in text


def test_tools_variable_is_passed_when_the_template_reads_it() -> None:
    template = ChatTemplate(
        "{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    tools = [Tool.model_validate({"type": "function", "function": {"name": "f", "arguments": {}}})]
    assert template.uses_tools
    assert (
        template.apply(messages({"role": "user", "content": "Hi"}), (tools, "PROMPT")) == "[f]Hi\n---\nPROMPT"
    )
