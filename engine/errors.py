"""Errors the engine raises, each meant to be shown to a person as one line.

Every error the engine API documents derives from :class:`KvchatError`. ``usage``
errors are the user's to fix (a bad path, a bad config value, an empty prompt): the
CLI exits with code 2 for them, 1 for the rest.
"""

from __future__ import annotations


class KvchatError(Exception):
    """Base of every error kvchat reports to a person."""

    code = "error"
    usage = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelFileError(KvchatError):
    """The model file is missing, unreadable, not a valid GGUF, holds values llama.cpp
    would abort on, or llama.cpp refuses it."""

    code = "model_file"
    usage = True


class ModelLoadError(KvchatError):
    """A sound file that still cannot be used (llama.cpp cannot make a context of that
    size), or a server that cannot be used."""

    code = "model_load"


class ConfigError(KvchatError):
    """The config file is unreadable, not TOML, or has a wrong key or value."""

    code = "config"
    usage = True


class PromptError(KvchatError):
    """The prompt cannot be sent: empty, not UTF-8, or longer than the context."""

    code = "prompt"
    usage = True

    def __init__(self, message: str, code: str = "prompt") -> None:
        super().__init__(message)
        self.code = code


class ConversationNotFound(KvchatError):
    code = "conversation_not_found"
    usage = True


class StoreError(KvchatError):
    """The conversation store cannot be opened or written."""

    code = "store"


class EngineClosed(KvchatError):
    code = "closed"


class DecodeError(KvchatError):
    """llama.cpp failed to evaluate a batch."""

    code = "decode"


class ConstraintError(KvchatError):
    """A structured-output constraint cannot be turned into a grammar."""

    code = "constraint_invalid"


class SchemaFileError(KvchatError):
    """A ``--schema`` file that is missing, not JSON, or not a JSON Schema."""

    code = "bad_schema"
    usage = True


class EngineDied(KvchatError):
    """The engine's process ended without being asked to (a crash inside llama.cpp, or
    killed by the system): the app stays up and starts a new one for the next reply."""

    code = "engine_died"


class ModelDoesNotFit(ModelLoadError):
    """A model whose memory plan does not fit the budget: a model to switch to, refused
    before anything is unloaded (the model in use stays), or a model to start under a
    budget the user set (``--budget``, ``model.memory_budget``). Under a detected budget
    a model that does not fit is still loaded (the weights are mapped from the file and
    may page), and the planned snapshot says it does not fit."""

    code = "model_does_not_fit"
    usage = True


class SwitchUnsupported(KvchatError):
    """The backend cannot change its model while it runs (a server serves its own)."""

    code = "switch_unsupported"
    usage = True


class MessageNotFound(KvchatError):
    """No stored message has this id (or it is in another conversation)."""

    code = "message_not_found"
    usage = True


class BranchError(KvchatError):
    """A branch that cannot be taken: editing a reply, answering again in a
    conversation with nothing to answer."""

    code = "branch"
    usage = True


class SearchError(KvchatError):
    """A search query with nothing to search for, or one the index refused."""

    code = "search_query"
    usage = True
