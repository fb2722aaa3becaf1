"""Route templates: the bundled ones validate; a user's broken one is reported and
skipped while the rest load; a user's own replaces or adds a route."""

from __future__ import annotations

from pathlib import Path

from engine.config import SamplingConfig
from engine.routing.router import Router
from engine.routing.templates import (
    BUILTIN_ROUTES,
    ContextBudget,
    bundled_template_files,
    load_templates,
    parse_template,
)


def test_every_bundled_template_validates() -> None:
    files = bundled_template_files()
    assert {p.stem for p in files} >= set(BUILTIN_ROUTES)
    for path in files:
        template = parse_template(path)
        assert template.description
        assert template.budget.reserve_tokens(4096) > 0
    templates = load_templates()
    assert templates.problems == ()
    assert set(templates.names) >= set(BUILTIN_ROUTES)


def test_budget_is_tokens_or_a_share_of_the_context() -> None:
    budget = ContextBudget(prompt_share=0.5, reply_reserve=300)
    assert budget.prompt_tokens(4096) == 2048
    assert budget.reserve_tokens(4096) == 300
    assert ContextBudget(reply_reserve=0.1).reserve_tokens(8192) == 819
    assert ContextBudget(reply_reserve=100_000).reserve_tokens(2048) == 2048


def test_overrides_apply_except_pinned_fields() -> None:
    code = load_templates().get("code")
    base = SamplingConfig(temperature=0.9, max_tokens=64)
    assert code.sampling.apply(base).temperature == code.sampling.temperature
    pinned = code.sampling.apply(base, pinned={"max_tokens"})
    assert pinned.max_tokens == 64
    assert pinned.temperature == code.sampling.temperature


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_broken_user_templates_are_reported_and_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    _write(folder, "legal", 'name = "legal"\ndescription = "Contracts"\n'
                            'keywords = ["contract", "clause"]\n[budget]\nreply_reserve = 0.2\n')
    _write(folder, "typo", 'name = "typo"\ndescription = "x"\n[budget]\nreply_reserv = 5\n')
    _write(folder, "badshare", 'name = "badshare"\ndescription = "x"\n'
                               '[budget]\nprompt_share = 1.5\n')
    _write(folder, "notoml", 'name = "notoml\n')
    _write(folder, "output", 'name = "output"\ndescription = "x"\noutput = "yaml"\n')
    _write(folder, "renamed", 'name = "other"\ndescription = "x"\n')
    templates = load_templates(folder)
    assert "legal" in templates.names
    assert set(templates.names) >= set(BUILTIN_ROUTES)
    problems = "\n".join(templates.problems)
    assert len(templates.problems) == 5, problems
    assert f"template {folder / 'typo.toml'}: budget.reply_reserv: unknown key" in problems
    assert f"template {folder / 'badshare.toml'}: budget.prompt_share" in problems
    assert f"template {folder / 'notoml.toml'}: not valid TOML" in problems
    assert f"template {folder / 'output.toml'}: output: Input should be" in problems
    assert "name: 'other' does not match the file name 'renamed'" in problems
    for problem in templates.problems:
        assert "\n" not in problem


def test_user_template_replaces_a_bundled_one_and_adds_a_route(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    _write(folder, "qa", 'name = "qa"\ndescription = "Terse answers"\n'
                         'instructions = "One sentence."\n[sampling]\ntemperature = 0.0\n')
    _write(folder, "legal", 'name = "legal"\ndescription = "Contracts"\n'
                            'keywords = ["contract", "indemnity clause"]\n')
    templates = load_templates(folder)
    assert templates.get("qa").instructions == "One sentence."
    assert templates.sources["qa"] == str(folder / "qa.toml")
    router = Router(templates)
    decision = router.route("Is this indemnity clause enforceable in Germany?")
    assert decision.route == "legal"
    assert "keyword 'indemnity clause' of template legal" in decision.reason
    # Whole words only: "contractor" is not "contract".
    assert router.route("My contractor never showed up, what a day").route != "legal"
