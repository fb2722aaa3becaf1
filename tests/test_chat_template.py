"""Chat templates from model files: what real ones need, what hostile ones cannot do,
and the built-in format a model falls back to when its template fails.

The first part renders templates in pure Python (no model). The tests at the end load
the bundled SmolLM2 through llama.cpp from copies whose metadata was changed."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import ModelConfig
from engine.events import ChatFormatFallback, Done, Event, ModelLoaded, TokenChunk, parse_event
from engine.model.bundled import default_model_path
from engine.model.chat_format import (
    CHATML,
    GEMMA,
    MarkerFormat,
    TemplateFormat,
    TemplateWithFallback,
    choose_format,
)
from engine.model.chat_template import compile_template
from engine.model.gguf_header import read_gguf_header
from engine.model.template_limits import Limits, TemplateProblem
from tests.conftest import GREEDY, chat_request, run_kvchat
from tests.gguf_patch import patch_gguf
from tui.widgets.memory_pane import MemoryPane

# Templates as their models publish them (tool-calling branches kept where they are
# short; they are not taken without tools).
LLAMA_3_2 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""  # noqa: E501

QWEN_2_5 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501

MISTRAL_0_1 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only "
    "user and assistant roles are supported!') }}{% endif %}{% endfor %}")

GEMMA_3_IT = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

TALK = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi"),
        ChatMessage(role="assistant", content="Hello!"), ChatMessage(role="user", content="Bye")]


def never(_text: str) -> bool:
    return False


def smollm2_template() -> str:
    template = read_gguf_header(default_model_path()).chat_template
    assert template is not None
    return template


# -- real templates -----------------------------------------------------------------

def test_smollm2s_own_template_is_chatml_with_its_default_system_prompt() -> None:
    fmt = choose_format("auto", "llama", smollm2_template(), "<|im_start|>", "<|im_end|>", never)
    assert (fmt.name, fmt.note) == ("gguf-template", "")
    assert fmt.render(TALK) == CHATML.render(TALK)
    assert fmt.render(TALK[1:2]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.turn_ends() == ["<|im_end|>\n", "<|im_end|>\n"]


@pytest.mark.parametrize("adds_bos", [True, False])
def test_llama_3_2_dates_its_system_header_and_the_bos_is_written_once(adds_bos: bool) -> None:
    fmt = choose_format("auto", "llama", LLAMA_3_2, "<|begin_of_text|>", "<|eot_id|>",
                        lambda t: t == "<|eot_id|>", tokenizer_adds_bos=adds_bos)
    before = datetime.now().strftime("%d %b %Y")
    text = fmt.render(TALK)
    today = {before, datetime.now().strftime("%d %b %Y")}
    body = ("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
            "2023\nToday Date: {}\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>"
            "\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>"
            "assistant<|end_header_id|>\n\n")
    # llama.cpp's tokenizer adds the BOS where the model says so: the text must not too.
    bos = "" if adds_bos else "<|begin_of_text|>"
    assert text in {bos + body.format(day) for day in today}
    assert fmt.turn_ends() == ["<|eot_id|>", "<|eot_id|>"]
    assert isinstance(fmt, TemplateWithFallback) and fmt.fallback.name == "llama3"


def test_qwen_2_5_with_and_without_a_system_message_and_its_tools_in_json() -> None:
    fmt = choose_format("auto", "qwen2", QWEN_2_5, "", "<|im_end|>", never)
    assert fmt.render(TALK) == CHATML.render(TALK)
    assert fmt.render(TALK[1:]).startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    tool = {"type": "function", "function": {"name": "météo", "parameters": {"ville": "Zürich"}}}
    text = compile_template(QWEN_2_5).render({"messages": [m.model_dump() for m in TALK],
                                              "tools": [tool], "add_generation_prompt": True})
    # transformers' tojson: non-ASCII kept, keys in their order, no HTML escaping.
    assert "<tools>\n" + json.dumps(tool, ensure_ascii=False) + "\n</tools>" in text


def test_tojson_takes_transformers_arguments() -> None:
    value = {"b": ["ü", 1], "a": None}
    for kwargs in [{}, {"indent": 4}, {"indent": 2, "sort_keys": True},
                   {"separators": (",", ":")}, {"ensure_ascii": True}]:
        call = ", ".join([f"{k}={v!r}" for k, v in kwargs.items()])
        out = compile_template(f"{{{{ value | tojson({call}) }}}}").render({"value": value})
        assert out == json.dumps(value, **{"ensure_ascii": False, **kwargs}), kwargs


def test_mistral_refuses_a_system_message_so_it_opens_the_first_user_turn() -> None:
    fmt = choose_format("auto", "llama", MISTRAL_0_1, "<s>", "</s>", never,
                        tokenizer_adds_bos=True)
    assert fmt.name == "gguf-template"
    assert "takes no system message" in fmt.note
    assert fmt.render(TALK) == "[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]"
    assert fmt.turn_ends()[0] == "</s>"
    # Roles that do not alternate: that conversation is rendered in the built-in format.
    odd = [ChatMessage(role="user", content="one"), ChatMessage(role="user", content="two")]
    assert fmt.render(odd) == CHATML.render(odd)
    event = fmt.take_fallback()
    assert event is not None and not event.given_up
    assert "roles must alternate" in event.reason and event.chat_format == "chatml"
    assert fmt.take_fallback() is None  # said once
    assert fmt.render(TALK[1:]).startswith("[INST] Hi [/INST]")  # the next one tries again


def test_a_template_that_drops_the_system_message_gets_it_in_the_first_user_turn() -> None:
    template = ("{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
                "{% elif m.role == 'assistant' %}{{ m.content }}</s>{% endif %}{% endfor %}")
    fmt = choose_format("auto", "llama", template, "<s>", "</s>", never)
    assert fmt.name == "gguf-template" and "takes no system message" in fmt.note
    assert fmt.render(TALK) == "[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]"


def test_gemma_3_template_matches_the_built_in_gemma_format() -> None:
    fmt = choose_format("auto", "gemma3", GEMMA_3_IT, "<bos>", "<eos>", never,
                        tokenizer_adds_bos=True)
    assert (fmt.name, fmt.note) == ("gguf-template", "")
    assert fmt.render(TALK) == GEMMA.render(TALK)
    assert fmt.turn_ends()[0] == "<end_of_turn>\n"


def test_loop_controls_generation_tags_strftime_now_and_no_lipsum() -> None:
    out = compile_template(
        "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}"
        "{% break %}{% endif %}{{ i }}{% endfor %}|{% generation %}kept{% endgeneration %}|"
        "{{ strftime_now('%Y') }}|{{ lipsum is defined }}|{{ tools is none }}").render(
        {"tools": None})
    assert out == f"02|kept|{datetime.now().year}|False|True"


def test_a_long_conversation_still_renders() -> None:
    # The output limit grows with the conversation: 6 MB of messages is not hostile.
    big = [ChatMessage(role="user", content="word " * 1_200_000)]
    fmt = choose_format("auto", "llama", smollm2_template(), "", "", never)
    assert len(fmt.render(big)) > 6_000_000 and fmt.take_fallback() is None


# -- hostile templates ---------------------------------------------------------------

HOSTILE = [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "ran past the 1 s limit"),
    ("{% set s = 'x' * 3000 %}{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}"
     "{% endfor %}{% endfor %}", "ran past the 1 s limit"),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
     "ran past the 1 s limit"),
    ("{{ range(10 ** 9) | list }}", "range() of 1000000000 items"),
    ("{{ 'x' * 10 ** 10 }}", "a '*' would be 10000000000 characters"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}{{ ns.s }}", "a ~ concatenation would be"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
     "{% endfor %}", "a '+' would be"),
    ("{{ 'x'.ljust(10 ** 10) }}", "past the size limit"),
    ("{{ 'x' | center(9999999999) }}", "past the size limit"),
    ("{% set s = 'a' * 100000 %}{{ s.replace('a', s) }}", "str.replace would be"),
    ("{{ '{:>999999999}'.format(1) }}", "str.format would be"),
    ("{{ '%999999999d' % 1 }}", "a '%' would be"),
    ("{{ 7 ** 1000000 }}", "a power past"),
    ("{% set b = 'x' * 1000000 %}{{ [b, b, b, b, b] }}", "a value would be"),
    ("{% set b = 'x' * 1000000 %}{% set x %}{% for i in range(100000) %}{{ b }}{% endfor %}"
     "{% endset %}", "a joined block would be"),
    ("{% set b = 'x' * 1000000 %}{{ (range(1000) | map('string') | list) | join(b) }}",
     "a join would be"),
    ("{{ ('\n' * 1000000) | indent(100) }}", "the indent filter's output would be"),
    ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "its output passed"),
    ("{{ messages | tojson(indent=10 ** 6) }}", "tojson's indent is past 64"),
    ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", "RecursionError"),
    ("{{ lipsum(10 ** 9) }}", "'lipsum' is undefined"),
    ("{% for %}", "it does not parse"),
    ("{{ raise_exception('no, thanks') }}", "the template refused the conversation: no, thanks"),
    ("{{ messages[0].content.upper() + undefined_thing.attr }}", "'undefined_thing' is undefined"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ 'x' }}", "its output leaves out part of the conversation"),
    ("{# " + "x" * 300_000 + " #}", "the template is 300006 characters"),
]


@pytest.mark.parametrize("template, reason", HOSTILE, ids=[r for _t, r in HOSTILE])
def test_a_hostile_template_falls_back_at_load_with_the_reason(template: str, reason: str) -> None:
    fmt = choose_format("auto", "llama", template, "<s>", "</s>", never)
    assert isinstance(fmt, MarkerFormat) and fmt.name == "chatml"
    assert fmt.note.startswith("the model's chat template failed a test conversation (")
    assert reason in fmt.note and fmt.note.endswith("using the built-in chatml format")
    assert "\n" not in fmt.note


def test_a_template_that_hoards_memory_stops_at_the_memory_limit() -> None:
    template = compile_template(
        "{{ range(100000) | map('string') | map('center', 1000000) | list | length }}",
        Limits(memory_bytes=64 << 20))
    with pytest.raises(TemplateProblem, match="used more than 64 MiB"):
        template.render({})


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch {mark}') }}",
    "{{ joiner.__init__.__globals__['__builtins__']['open']('{mark}', 'w') }}",
    "{{ namespace.__init__.__globals__.sys.modules.os.system('touch {mark}') }}",
    "{{ self._TemplateReference__context.environment.globals }}",
    "{{ (messages | attr('__class__')).__base__.__subclasses__() }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('{mark}', 'w') }}",
    "{% set x = messages.append({'role': 'user'}) %}{{ messages | length }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_do_not_run(template: str, tmp_path: Path) -> None:
    mark = tmp_path / "escaped"
    fmt = TemplateFormat(template.replace("{mark}", str(mark)), "", "")
    with pytest.raises(TemplateProblem, match=r"unsafe|undefined|no attribute"):
        fmt.render(TALK)
    assert not mark.exists()


@pytest.mark.parametrize("template", ["{{ range.__globals__ }}", "{{ ''.__class__ }}",
                                      "{{ self._TemplateReference__context }}",
                                      "{{ strftime_now.__code__ }}"])
def test_an_unsafe_attribute_alone_renders_as_nothing(template: str) -> None:
    assert TemplateFormat(template, "", "").render(TALK) == ""


def test_a_template_failing_on_a_later_conversation_falls_back_for_it() -> None:
    template = ("{% if 'boom' in messages[-1].content %}{{ raise_exception('no boom') }}"
                "{% endif %}{% if 'slow' in messages[-1].content %}{% for i in range(100000) %}"
                "{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}" + CHATML_TEMPLATE)
    fmt = choose_format("auto", "llama", template, "", "", never, limits=Limits(seconds=0.2))
    assert isinstance(fmt, TemplateWithFallback)
    boom = [ChatMessage(role="user", content="boom")]
    assert fmt.render(boom) == CHATML.render(boom)
    event = fmt.take_fallback()
    assert event is not None and "for this conversation" in event.message
    assert (event.reason, event.given_up) == ("the template refused the conversation: no boom",
                                              False)
    slow = [ChatMessage(role="user", content="slow")]
    assert fmt.render(slow) == CHATML.render(slow)
    event = fmt.take_fallback()
    assert event is not None and event.given_up and "0.2 s limit" in event.reason
    assert "from now on" in event.message and fmt.name == "chatml"
    # Given up: the template is not run again, not even for a conversation it renders.
    assert fmt.render(TALK) == CHATML.render(TALK) and fmt.take_fallback() is None


class _PaneHost(App[None]):
    def compose(self) -> ComposeResult:
        yield MemoryPane()


async def test_the_memory_pane_says_why_the_template_was_replaced() -> None:
    note = "the model's chat template failed a test conversation (it ran past the 1 s limit)"
    info = ModelLoaded(path="/models/x.gguf", name="x", architecture="llama", description="x",
                       n_params=1, file_bytes=1, weights_bytes=1, n_vocab=10, n_ctx=512,
                       n_ctx_train=512, n_layers=2, n_gpu_layers=0, backend="CPU",
                       chat_format="chatml", chat_format_note=note, kv_bytes=1, load_s=0.1)
    async with _PaneHost().run_test() as pilot:
        pane = pilot.app.query_one(MemoryPane)
        pane.show_model(info)
        await pilot.pause()
        assert f"chat format chatml: {note}" in str(pane.query_one("#mem-layers").render())
        pane.show_model(info.model_copy(update={"chat_format_note": ""}))
        await pilot.pause()
        assert "chat format" not in str(pane.query_one("#mem-layers").render())


# -- through llama.cpp (hold the model lock) -----------------------------------------

def patched(tmp_path: Path, name: str, template: str, **changes: object) -> Path:
    return patch_gguf(default_model_path(), tmp_path / f"{name}.gguf", template=template,
                      **changes)  # type: ignore[arg-type]


def events_of(stdout: str) -> list[Event]:
    return [parse_event(line) for line in stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("template, reason", [
    ("{% for message in messages %}{{ message['content'] }", "it does not parse"),
    (HOSTILE[0][0] + CHATML_TEMPLATE, "ran past the 1 s limit"),
])
def test_kvchat_ask_on_a_model_whose_template_fails_answers_with_a_note(
        tmp_path: Path, kvchat_home: Path, template: str, reason: str) -> None:
    model = patched(tmp_path, "bad-template", template)
    args = ("ask", "--model", str(model), "--temp", "0", "--max-tokens", "12")
    proc = run_kvchat(*args, "--events", "jsonl", "What is the capital of France?",
                      home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    events = events_of(proc.stdout)
    loaded = events[0]
    assert isinstance(loaded, ModelLoaded) and loaded.chat_format == "chatml"
    assert reason in loaded.chat_format_note
    done = events[-1]
    assert isinstance(done, Done) and "Paris" in done.text
    plain = run_kvchat(*args, "What is the capital of France?", home=kvchat_home)
    assert plain.returncode == 0 and "Paris" in plain.stdout
    assert f"kvchat: note: {loaded.chat_format_note}" in plain.stderr
    assert "Traceback" not in plain.stderr


async def test_a_turn_marker_missing_from_the_eog_metadata_still_ends_the_reply(
        tmp_path: Path) -> None:
    # <|im_end|> renamed <|im_fin|> and marked user-defined, EOS moved to <|endoftext|>:
    # llama.cpp neither knows it as end of generation nor as a control token. BOS is
    # <|endoftext|>, which the tokenizer adds and the template writes too.
    template = "{{ bos_token }}" + CHATML_TEMPLATE.replace("<|im_end|>", "<|im_fin|>")
    model = patched(tmp_path, "renamed-turn-end", template, token_text={2: "<|im_fin|>"},
                    token_type={2: 4}, scalars={"tokenizer.ggml.eos_token_id": 0,
                                                "tokenizer.ggml.bos_token_id": 0,
                                                "tokenizer.ggml.add_bos_token": True})
    eng = LocalEngine(ModelConfig(path=model, n_ctx=512), GREEDY)
    await eng.start()
    try:
        lm = await eng.run_on_engine_thread(lambda gen: gen.lm)
        assert lm.turn_end_tokens == {2}
        assert not lm.model.token_get_attr(2) & 8  # not a control token
        prompt = lm.chat_format.render(TALK[1:2])
        assert prompt.startswith("<|im_start|>user\n")  # the template's BOS text dropped
        assert lm.tokenize(prompt, add_bos=True)[:2] == [0, 1]  # one BOS, then <|im_start|>
        events = [e async for e in eng.chat(chat_request(
            [ChatMessage(role="user", content="What is the capital of France?")]))]
    finally:
        await eng.close()
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop", done
    assert "Paris" in done.text and "<|im_fin|>" not in done.text
    assert 2 not in [t for e in events if isinstance(e, TokenChunk) for t in e.token_ids]


async def test_a_template_that_hangs_on_a_later_message_is_bounded_and_cancellable(
        tmp_path: Path) -> None:
    template = ("{% if 'slow' in messages[-1].content %}{% for i in range(100000) %}"
                "{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
                + CHATML_TEMPLATE)
    eng = LocalEngine(ModelConfig(path=patched(tmp_path, "slow-later", template), n_ctx=512),
                      GREEDY)
    await eng.start()
    try:
        assert eng.info is not None and eng.info.chat_format == "gguf-template"
        cancel = threading.Event()
        asyncio.get_running_loop().call_later(0.2, cancel.set)  # Esc, while it renders
        started = time.monotonic()
        events = [e async for e in eng.stream(chat_request(
            [ChatMessage(role="user", content="Say something slow.")]), cancel)]
        elapsed = time.monotonic() - started
        after = [e async for e in eng.chat(chat_request(
            [ChatMessage(role="user", content="What is the capital of France?")]))]
    finally:
        await eng.close()
    # The cancel stopped the render itself: it never reached its 1 s limit (which would
    # have given the template up, with a fallback event), and nothing was generated.
    assert len(events) == 1 and isinstance(events[0], Done), events
    assert events[0].finish_reason == "cancelled" and events[0].text == ""
    print(f"cancelled during a hanging render: the turn ended after {elapsed:.2f} s")
    # Not the template's fault: the next conversation still renders with it.
    assert not any(isinstance(e, ChatFormatFallback) for e in after)
    assert isinstance(after[-1], Done) and "Paris" in after[-1].text
