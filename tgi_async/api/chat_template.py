"""Chat templates rendered like TGI's router (router/src/infer/chat_template.rs, minijinja).

TGI renders the model's template with minijinja's defaults, not transformers' environment: no
`trim_blocks`/`lstrip_blocks`, `none`/`true`/`false` print in lower case, `tojson` is compact and
HTML-escapes `<>&'`, and `raise_exception`/`strftime_now` are functions. The template sees `messages` as
`{role, content}` with content flattened to one string, `bos_token`, `eos_token`,
`add_generation_prompt=True` and `tools` (None without tools). A conversation ending with an assistant
message is continued: the text is cut after that message's content.

Errors carry TGI's messages: `Template error: template not found` when the model has none, else
`Template error: <kind>: <detail> (in <string>:<line>)`.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tgi_async.api.openai_requests import Message, Tool, compact_json

TEMPLATE_NAME = "<string>"  # minijinja's name for a template built from a string
TemplateKey = tuple[str, str | None, str | None]  # what builds a ChatTemplate: source, bos, eos


@dataclass(eq=False)
class ChatTemplateError(Exception):
    """A template failure as TGI reports it: HTTP 422, `error_type` `template_error` or `tool_error`."""

    message: str
    error_type: str = "template_error"

    def __str__(self) -> str:
        return self.message


class TemplateNotFound(ChatTemplateError):
    def __init__(self) -> None:
        super().__init__("Template error: template not found")


class _RaisedByTemplate(Exception):
    """`raise_exception(...)` called by a template (minijinja reports it as a syntax error)."""


def _raise_exception(message: Any) -> None:
    raise _RaisedByTemplate(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().astimezone().strftime(fmt)


def _tojson(value: Any, indent: Any = None) -> str:
    """minijinja's `tojson`: compact unless `indent` (True = 2), `<>&'` escaped as \\uXXXX."""
    if indent is True:
        indent = 2
    elif indent is False:
        indent = None
    if indent is None:
        text = compact_json(value)
    else:
        text = json.dumps(value, ensure_ascii=False, indent=int(indent))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        text = text.replace(char, escaped)
    return text


def _finalize(value: Any) -> Any:
    """Print values like minijinja: `none`, `true`, `false`."""
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value


def _environment() -> jinja2.Environment:
    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"], finalize=_finalize)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


def _adapt(source: str) -> str:
    """TGI's textual fixes applied before compiling (Gemma 3's content index, training-only tags)."""
    source = source.replace("messages[0]['content'][0]['text']", "messages[0]['content']")
    source = source.replace("[::-1]", "|reverse")
    source = source.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    return source


def _template_line(exc: BaseException) -> int:
    """The template line an exception was raised from (jinja2 rewrites tracebacks to template lines)."""
    line = 0
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return getattr(exc, "lineno", None) or line


def _describe(exc: BaseException) -> str:
    """minijinja's Display of an error: `<kind>: <detail> (in <string>:<line>)`."""
    if isinstance(exc, _RaisedByTemplate | jinja2.TemplateSyntaxError):
        kind, detail = "syntax error", str(getattr(exc, "message", None) or exc)
    elif isinstance(exc, jinja2.UndefinedError):
        kind, detail = "undefined value", str(exc)
    else:
        kind, detail = "invalid operation", str(exc) or type(exc).__name__
    return f"Template error: {kind}: {detail} (in {TEMPLATE_NAME}:{_template_line(exc)})"


def select_template(chat_template: Any) -> str | None:
    """A tokenizer's `chat_template`: a string, or named templates of which TGI takes `default`."""
    if isinstance(chat_template, str):
        return chat_template
    if isinstance(chat_template, dict):
        value = chat_template.get("default")
        return value if isinstance(value, str) else None
    if isinstance(chat_template, list):
        for item in chat_template:
            if isinstance(item, dict) and item.get("name") == "default":
                return item.get("template")
    return None


class ChatTemplate:
    """One model's chat template, compiled once; `apply` is pure and thread-safe."""

    def __init__(self, source: str, bos_token: str | None = None, eos_token: str | None = None) -> None:
        self.key: TemplateKey = (source, bos_token, eos_token)  # rebuilds it in a worker process
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = _environment()
        source = _adapt(source)
        try:
            self._template: jinja2.Template | None = env.from_string(source)
            self._syntax_error: ChatTemplateError | None = None
            self.uses_tools = "tools" in meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            # NOTE: TGI refuses to start on a broken template; we start and answer 422 on chat requests.
            self._template = None
            self._syntax_error = ChatTemplateError(_describe(exc))
            self.uses_tools = False

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatTemplate | None:
        """The template of a transformers tokenizer, or None when it has none."""
        source = select_template(getattr(tokenizer, "chat_template", None))
        if source is None:
            return None
        return cls(
            source,
            _token_text(getattr(tokenizer, "bos_token", None)),
            _token_text(getattr(tokenizer, "eos_token", None)),
        )

    def apply(self, messages: list[Message], tools_and_prompt: tuple[list[Tool], str] | None = None) -> str:
        """Render `messages` (with `tools` and the tool prompt when given) into the prompt text."""
        if self._template is None:
            assert self._syntax_error is not None
            raise self._syntax_error
        texts = [message.text() for message in messages]
        tools = None
        if tools_and_prompt is not None:
            tool_list, tool_prompt = tools_and_prompt
            tools = [tool.template_value() for tool in tool_list]
            if self.uses_tools:
                appended = f"\n---\n{tool_prompt}"
            else:
                appended = f"\n---\n{compact_json(tools)}\n{tool_prompt}"
            # NOTE: like TGI, only a last message with content (not tool calls) gets the tool text.
            if messages and messages[-1].content is not None:
                texts[-1] += appended
        rendered_messages = [{"role": m.role, "content": t} for m, t in zip(messages, texts, strict=True)]
        try:
            rendered = self._template.render(
                messages=rendered_messages,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=True,
                tools=tools,
            )
        except Exception as exc:
            raise ChatTemplateError(_describe(exc)) from exc
        if messages and messages[-1].role == "assistant":
            last = texts[-1]
            index = rendered.rfind(last)
            if index >= 0:
                rendered = rendered[: index + len(last)].rstrip()
        return rendered


def _token_text(token: Any) -> str | None:
    if token is None:
        return None
    return token if isinstance(token, str) else getattr(token, "content", str(token))


__all__ = ["ChatTemplate", "ChatTemplateError", "TemplateKey", "TemplateNotFound", "select_template"]
