"""Where the SDK reaches the gateway: the bindings componentize-py generates
inside a component, or the fakes of `wicket.testing` in a unit test."""

import importlib

_fake = None


def module(name):
    """The contract interface `name` (`state`, `log`, `types`...)."""
    if _fake is not None:
        return getattr(_fake, name)
    return importlib.import_module("wit_world.imports." + name)


def install(fake):
    """Route every SDK call to `fake` (used by `wicket.testing`)."""
    global _fake
    _fake = fake
