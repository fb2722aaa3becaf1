"""Config validation and turn rendering (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.api import ChatMessage
from engine.config import KvchatConfig, load_config
from engine.errors import ConfigError, ModelLoadError
from engine.model.chat_format import GEMMA, TemplateFormat, choose_format
from engine.model.template_limits import TemplateProblem
from tui.config import UIConfig, load_app_config, ui_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_default_config_means_defaults(kvchat_home: Path) -> None:
    assert load_config() == KvchatConfig()


def test_config_file_is_read_from_kvchat_home(kvchat_home: Path) -> None:
    kvchat_home.mkdir(parents=True)
    write(kvchat_home / "config.toml", "[model]\nn_ctx = 2048\n[sampling]\ntemperature = 0.2\n")
    config = load_config()
    assert config.model.n_ctx == 2048 and config.sampling.temperature == 0.2


@pytest.mark.parametrize("body, expected", [
    ("[model]\nnctx = 2048\n", "model.nctx: unknown key"),
    ("[modle]\nn_ctx = 2048\n", "modle: unknown key"),
    ("[model]\nn_ctx = 'big'\n", "model.n_ctx: Input should be a valid integer"),
    ("[sampling]\ntemperature = -1\n", "sampling.temperature: Input should be greater"),
    ("[model\nn_ctx = 1\n", "not valid TOML"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path / "config.toml", body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in info.value.message
    assert "\n" not in info.value.message
    assert str(path) in info.value.message


@pytest.mark.parametrize("body, expected", [
    ("[ui]\nthem = 'kvchat-light'\n", "ui.them: unknown key"),
    ("[ui]\nui_nice = 50\n", "ui.ui_nice: Input should be less than or equal to 19"),
    ("[ui]\nstream_view = 'fancy'\n", "ui.stream_view: Input should be"),
])
def test_the_apps_ui_table_is_checked_by_the_app(tmp_path: Path, body: str,
                                                 expected: str) -> None:
    path = write(tmp_path / "config.toml", body)
    assert load_config(path).ui  # kept as read: the engine does not know its keys
    with pytest.raises(ConfigError) as info:
        load_app_config(path)
    assert info.value.message.startswith(f"{path}: {expected}")
    assert "\n" not in info.value.message


def test_the_apps_ui_table_reads_as_settings(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", "[ui]\ntheme = 'kvchat-light'\nui_nice = 0\n")
    ui = ui_settings(load_app_config(path))
    assert (ui.theme, ui.ui_nice, ui.engine_process) == ("kvchat-light", 0, True)
    assert ui_settings(KvchatConfig()) == UIConfig()


def test_explicit_config_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_gemma_format_folds_system_into_first_user_turn() -> None:
    text = GEMMA.render([
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="assistant", content="Hello!"),
        ChatMessage(role="user", content="Bye"),
    ])
    assert text == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gguf_template_renders_in_a_sandbox() -> None:
    template = ("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}"
                "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    fmt = TemplateFormat(template, "<s>", "</s>")
    assert fmt.render([ChatMessage(role="user", content="hi")]) == "<s><user>hi<assistant>"
    evil = TemplateFormat("{{ ''.__class__.__mro__[1].__subclasses__() }}", "", "")
    with pytest.raises(TemplateProblem, match="unsafe"):
        evil.render([ChatMessage(role="user", content="hi")])


def test_format_choice() -> None:
    never = lambda _text: False  # noqa: E731
    assert choose_format("auto", "gemma3", None, "", "", never).name == "gemma"
    assert choose_format("auto", "llama", None, "", "", lambda t: True).name == "llama3"
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n" \
             "{% endfor %}<|im_start|>assistant\n"
    assert choose_format("auto", "qwen2", chatml, "", "", never).name == "gguf-template"
    # A template that leaves the conversation out is no template: the built-in one serves.
    assert choose_format("auto", "qwen2", "{{ 'x' }}", "", "", never).name == "chatml"
    assert choose_format("chatml", "gemma3", None, "", "", never).name == "chatml"
    with pytest.raises(ModelLoadError, match="unknown chat format"):
        choose_format("vicuna", "llama", None, "", "", never)
