"""Cheap signals that say what kind of request a prompt is.

Each detector looks at the prompt (its head and tail for instructions, a bounded slice
for code) and returns the signals that fired: a route, a weight and a label a person
can read. Pure functions of the text: the same prompt always gives the same signals.
Everything here is regular expressions and set lookups, so a prompt routes in well
under a millisecond; a megabyte prompt is only ever scanned in bounded slices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

HEAD_CHARS = 400
"""Instructions come first ("Summarize this: ...") ..."""
TAIL_CHARS = 200
"""... or last ("<pasted text> TL;DR?")."""
CODE_SCAN_CHARS = 8000
"""Code-like lines are counted in this much of the prompt at most."""
LONG_INPUT_CHARS = 300
"""Text beyond an instruction that counts as supplied material to work on."""


@dataclass(frozen=True)
class Signal:
    route: str
    weight: float
    label: str
    material: bool = False
    """Describes what the prompt contains (code, text) rather than what it asks for."""
    leading: bool = False
    """The prompt opens with this instruction: it says what to do with the material."""


# -- code ---------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+#.-]*)", re.MULTILINE)
_INLINE_CODE = re.compile(r"`[^`\n]{2,}`")
_CODE_LINE = re.compile(
    r"""^\s*(?:
        (?:def|class|import|from\s+\S+\s+import|return|func|fn|let|const|var|elif|
           public|private|protected|static|package|using|namespace|struct|impl|
           interface|async\s+def|await|yield|lambda|print\(|console\.|echo|SELECT|INSERT|
           UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b
      | \#include | \#!/ | <\?php | <!DOCTYPE | </?[a-z]+[^>]*> \s*$
      | \$\s+\w | >>>\s
      | (?:if|for|while|switch|catch)\s*\(.*\)\s*\{?\s*$
      | [\w.\[\]]+\s*(?:=|\+=|-=|:=|==)\s*[^=\s].*[;)\]}]?\s*$
      | .*[;{}]\s*$
      | .*\):\s*$
      | File\s+".*",\s+line\s+\d+
    )""",
    re.VERBOSE,
)
_TRACEBACK = re.compile(
    r"Traceback \(most recent call last\)|\b\w+(?:Error|Exception):\s|\berror\[E\d+\]|"
    r"\bsegfault|segmentation fault|stack ?trace|\bnull pointer|undefined is not|"
    r"\bcompil(?:e|er|ation) (?:error|fails?)|\bbuild fails?", re.IGNORECASE)
_CALL = re.compile(r"\b[a-z_][a-z0-9_]*(?:\.[a-z_]\w*)*\([^()\n]{0,40}\)", re.IGNORECASE)
_CODE_WORDS = frozenset((
    "python", "javascript", "typescript", "java", "rust", "golang", "haskell", "kotlin",
    "swift", "ruby", "php", "perl", "scala", "c++", "c#", "sql", "bash", "zsh", "powershell",
    "regex", "regexp", "function", "functions", "method", "variable", "compiler", "bug",
    "debug", "api", "endpoint", "json", "yaml", "dockerfile", "docker", "kubernetes", "git",
    "refactor", "recursion", "recursive", "array", "arrays", "dataframe", "pandas", "numpy",
    "async", "callback", "callbacks", "mutex", "exception", "npm", "pip", "script",
    "snippet", "code", "makefile", "linter", "pytest", "unittest", "react", "vue", "django",
    "flask", "fastapi", "node.js", "nodejs", "html", "css", "struct", "pointer", "boolean",
    "runtime", "hashmap", "csv", "stdout", "stdin", "cli", "segfault", "indexerror",
    "typeerror", "o(1)", "o(n)",
))
"""Words that name programming things; ambiguous English words (list, class, string,
loop, search) are left out and only count inside the phrases below."""
_CODE_PHRASES = re.compile(
    r"\b(?:type hints?|binary search|linked list|unit tests?|lru cache|list comprehension|"
    r"sorting algorithm|shell (?:script|one-liner)|command line|for loop|while loop|"
    r"class (?:in|for)|string (?:in|to)|pull request|merge conflict|stack overflow)\b",
    re.IGNORECASE)
_CODE_VERBS = re.compile(
    r"^(?:please\s+|pls\s+|can you\s+|could you\s+|would you\s+|i need (?:you )?to\s+|"
    r"help me\s+|let's\s+)?(?:write|implement|code|create|build|generate|fix|debug|"
    r"refactor|optimi[sz]e|convert|port|rewrite|add|review|use|make|show me how to)\b",
    re.IGNORECASE)
_CODE_VERBS_INTL = re.compile(
    r"\b(?:schreibe|programmiere|escribe|implementa|écris|écrivez|implémente|scrivi|"
    r"编写|写一个|実装)\b", re.IGNORECASE)
_ASKS_FOR_CODE = re.compile(
    r"\b(?:show me (?:the |some )?code|code (?:example|sample|snippet)s?|example code|"
    r"(?:write|give me) (?:the |some )?code)\b", re.IGNORECASE)
_IDENTIFIER = re.compile(r"\b(?:[a-z]+[A-Z][a-zA-Z0-9]*|[a-z0-9]+_[a-z0-9_]+)\b")
"""camelCase or snake_case: a name from code (useEffect, read_csv)."""
_WORD = re.compile(r"[a-z0-9+#.]+(?:[-'][a-z0-9]+)*", re.IGNORECASE)


def fence_languages(text: str) -> list[str]:
    return [m.group(2) for m in _FENCE.finditer(text[:CODE_SCAN_CHARS])]


@cache
def _pygments_aliases() -> dict[str, str]:
    """Pygments' alias table (name -> language), read from its mapping module alone:
    no lexer module is imported, so the lookup costs a dict access."""
    from pygments.lexers._mapping import LEXERS

    table: dict[str, str] = {}
    for _module, name, aliases, _files, _mimes in LEXERS.values():
        for alias in aliases:
            table[alias.lower()] = name
    return table


@cache
def _sniffing_lexers() -> tuple[type, ...]:
    """Lexers whose ``analyse_text`` recognises a language from its first lines
    (shebangs, #include, <?php, doctype, ...): cheap regexes, no full lex."""
    from pygments.lexers import (
        BashLexer,
        CLexer,
        CppLexer,
        HtmlLexer,
        PerlLexer,
        PhpLexer,
        PythonLexer,
        RubyLexer,
        XmlLexer,
    )

    return (PythonLexer, BashLexer, CLexer, CppLexer, PhpLexer, HtmlLexer, XmlLexer,
            PerlLexer, RubyLexer)


def pygments_guess(snippet: str) -> str | None:
    """The language Pygments' text analysers recognise in ``snippet``, if any."""
    best, name = 0.0, None
    for lexer in _sniffing_lexers():
        score = lexer.analyse_text(snippet)
        if score > best:
            best, name = score, lexer.name
    return name if best >= 0.3 else None


def code_signals(text: str, words: set[str], head: str) -> list[Signal]:
    signals: list[Signal] = []
    scan = text[:CODE_SCAN_CHARS]
    langs = fence_languages(scan)
    if langs:
        named = [lang for lang in langs if lang]
        known = [_pygments_aliases().get(lang.lower()) for lang in named]
        language = next((k for k in known if k), None)
        label = f"code fence ({language})" if language else "code fence"
        signals.append(Signal("code", 3.0, label, material=True))
    lines = [ln for ln in scan.splitlines() if ln.strip()]
    code_lines = [ln for ln in lines if _CODE_LINE.match(ln)]
    if len(code_lines) >= 2 or (code_lines and len(lines) <= 2 and len(code_lines[0]) > 20):
        share = len(code_lines) / len(lines)
        weight = 3.0 if len(code_lines) >= 3 and share >= 0.3 else 2.0
        signals.append(Signal("code", weight, f"{len(code_lines)} code-like lines", material=True))
        if not langs and (language := pygments_guess("\n".join(code_lines[:40]))):
            signals.append(Signal("code", 0.5, f"Pygments recognises {language}", material=True))
    elif len(code_lines) == 1:
        signals.append(Signal("code", 1.0, "a code-like line", material=True))
    if inline := _INLINE_CODE.search(scan):
        symbolic = sum(inline.group(0).count(c) for c in "{}()[];=$|<>") >= 2
        signals.append(Signal("code", 2.5 if symbolic else 1.5, "inline code", material=True))
    elif _CALL.search(head):
        signals.append(Signal("code", 0.75, "a function call", material=True))
    if ident := _IDENTIFIER.search(head):
        signals.append(Signal("code", 1.5, f"a code identifier ({ident.group(0)})",
                              material=True))
    if _TRACEBACK.search(scan):
        signals.append(Signal("code", 2.0, "an error message or traceback"))
    hits = sorted(words & _CODE_WORDS)
    hits += [m.group(0).lower() for m in _CODE_PHRASES.finditer(head)]
    if hits:
        weight = min(2.4, 0.8 * len(hits))
        signals.append(Signal("code", weight, "programming words: " + ", ".join(hits[:4]),
                              material=True))
        if _CODE_VERBS.match(head) or _CODE_VERBS_INTL.search(head):
            signals.append(Signal("code", 2.0, "asks to write or change code"))
        elif _ASKS_FOR_CODE.search(head):
            signals.append(Signal("code", 2.0, "asks for code"))
    return signals


# -- summarize --------------------------------------------------------------------------

_SUMMARY = re.compile(
    r"\b(?:summar(?:y|i[sz]e|i[sz]ing)|sum (?:it |this |that |them )?up|tl;?\s?dr|condense|"
    r"recap|boil (?:it |this |that )?down|shorten|gist|synopsis|abstract of|"
    r"key (?:points|takeaways|facts)|main (?:points|ideas)|takeaways|in a nutshell|"
    r"executive summary|one-line summary|bullet-point summary|"
    # other languages: fr, de, es, it, pt, zh, ja, ru
    r"résum(?:e|er|ez|é)|zusammen(?:fassen|fassung)|fasse\b.*\bzusammen|"
    r"resum(?:e|ir|en|a)|riassum(?:i|ere)|sintetiza|краткое|резюм)"
    r"|总结|概括|摘要|要約|まとめ",
    re.IGNORECASE)
_LEADING = re.compile(r"^(?:please\s+|pls\s+|(?:can|could|would) you\s+(?:please\s+)?)?",
                      re.IGNORECASE)
_SUMMARY_OBJECT = re.compile(
    r"\b(?:this|these|the following|below|above|text|article|email|passage|notes|thread|"
    r"update|document|paper|chapter|transcript)\b|:\s*$|:\s", re.IGNORECASE)


def summarize_signals(text: str, head: str, tail: str, question: bool) -> list[Signal]:
    signals: list[Signal] = []
    in_head = _SUMMARY.search(head)
    in_tail = _SUMMARY.search(tail)
    supplied = len(text) - HEAD_CHARS // 2 >= LONG_INPUT_CHARS
    if in_head or in_tail:
        where = "at the start" if in_head else "at the end"
        match = (in_head or in_tail)
        assert match is not None
        asks = _SUMMARY_OBJECT.search(head if in_head else tail) or supplied
        how_to = re.search(r"\bhow (?:do|can|should|to)\b", head, re.IGNORECASE)
        if how_to and not supplied:
            signals.append(Signal("summarize", 0.5, f"mentions {match.group(0)!r}"))
        else:
            weight = 4.0 if asks else 2.5
            signals.append(Signal("summarize", weight,
                                  f"asks to {match.group(0).lower()!r} {where}"))
            if in_head and in_head.start() == _LEADING.match(head).end():  # type: ignore[union-attr]
                signals.append(Signal("summarize", 1.0, "opens with the instruction",
                                      leading=True))
    if supplied and signals:
        signals.append(Signal("summarize", 1.0, f"supplies {len(text)} characters of text"))
    return signals


# -- questions -------------------------------------------------------------------------

_WH = re.compile(
    r"^(?:and\s+|so\s+|but\s+)?(?:what(?:'s| is| are| was| were| does| do| did)?|why|how|"
    r"when|where|who|whom|whose|which)\b", re.IGNORECASE)
_AUX = re.compile(
    r"^(?:is|are|was|were|does|do|did|has|have|can|could|should|would|will|may|"
    r"isn't|aren't|doesn't|don't)\s+(?!you\b|u\b)", re.IGNORECASE)
_ASK = re.compile(
    r"^(?:please\s+)?(?:explain|define|describe|tell me (?:about|how|why|what|when|who)|"
    r"(?:can|could) you (?:tell|explain|describe)|what's the difference|compare)\b",
    re.IGNORECASE)
_QUESTION_INTL = re.compile(
    r"^(?:¿|qu[eé]|quel(?:le)?s?\b|pourquoi|comment\b|o[uù]\b|qui\b|combien|cu[aá]l|c[oó]mo|"
    r"por qu[eé]|d[oó]nde|cu[aá]ndo|qui[eé]n|was\b|wie\b|warum|wo\b|wer\b|wann\b|welche)"
    r"|(?:什么|为什么|怎么|哪|谁|吗|ですか|何|なぜ)", re.IGNORECASE)


def question_signals(head: str, last_sentence: str) -> list[Signal]:
    signals: list[Signal] = []
    first = head.lstrip()
    if _WH.match(first) or _QUESTION_INTL.search(first[:40]):
        signals.append(Signal("qa", 2.0, "opens with a question word"))
    elif _AUX.match(first):
        signals.append(Signal("qa", 1.25, "a yes/no question"))
    elif _ASK.match(first):
        signals.append(Signal("qa", 1.75, "asks to explain or describe"))
    if last_sentence.rstrip().endswith(("?", "？")):
        signals.append(Signal("qa", 1.0, "ends with a question mark"))
    return signals


# -- chat --------------------------------------------------------------------------------

_GREETING = re.compile(
    r"^(?:hi|hey|hello|hiya|yo|howdy|good (?:morning|afternoon|evening|night)|"
    r"thanks|thank you|thx|cheers|bye|goodbye|see you|ok(?:ay)?|cool|great|nice|lol|"
    r"bonjour|salut|hola|hallo|ciao|merci|gracias|danke|こんにちは|你好)\b[\s!.,?]*",
    re.IGNORECASE)
_CREATIVE = re.compile(
    r"\b(?:poem|story|stories|joke|song|lyrics|haiku|limerick|sonnet|toast|speech|"
    r"cover letter|riddle|fairy tale|pretend|role-?play|imagine|let's play|brainstorm|"
    r"ideas for|name for|names for|compose|rap|slogan)\b", re.IGNORECASE)
_OPINION = re.compile(
    r"\b(?:what do you think|do you (?:like|ever|think|enjoy|prefer)|your favou?rite|"
    r"would you rather|your opinion|how do you feel)\b", re.IGNORECASE)
_PERSONAL = re.compile(
    r"\b(?:i'?m feeling|i feel|i am feeling|i'm nervous|i'm so|i just|my day|how are you|"
    r"what's up|should i|can't decide|any (?:advice|encouragement|tips)|"
    r"help me (?:write|decide|choose|come up)|come up with|try again|what i meant|"
    r"translate|comment ça va|qué tal|wie geht)\b", re.IGNORECASE)


def chat_signals(head: str, n_words: int) -> list[Signal]:
    signals: list[Signal] = []
    if _GREETING.match(head.lstrip()):
        weight = 2.5 if n_words <= 8 else 1.0
        signals.append(Signal("chat", weight, "a greeting or acknowledgement"))
    if m := _CREATIVE.search(head):
        signals.append(Signal("chat", 2.5, f"creative or playful request ({m.group(0)!r})"))
    if m := _OPINION.search(head):
        signals.append(Signal("chat", 3.0, f"asks for an opinion ({m.group(0)!r})"))
    elif m := _PERSONAL.search(head):
        signals.append(Signal("chat", 2.0, f"personal or conversational ({m.group(0)!r})"))
    return signals


def words_of(text: str) -> set[str]:
    """Lower-case words; compounds also give their parts (``Python-Funktion``)."""
    words = {w.lower().rstrip(".") for w in _WORD.findall(text)}
    return words | {part for w in words if "-" in w for part in w.split("-")}


def keyword_hit(keywords: tuple[str, ...], lowered: str) -> str | None:
    """The first keyword found as a whole word or phrase in ``lowered`` text."""
    for keyword in keywords:
        if re.search(rf"(?<!\w){re.escape(keyword)}(?!\w)", lowered):
            return keyword
    return None


def unreadable_share(text: str) -> float:
    """Share of characters that are control characters or U+FFFD (decoding junk)."""
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch == "\ufffd" or (ch < " " and ch not in "\n\r\t"))
    return bad / len(text)
