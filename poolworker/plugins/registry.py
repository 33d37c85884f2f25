"""Finding plugins: installed packages register their ``IOProcessor`` classes under the entry
point group ``poolworker.io_processors``; ``--io-processor MODEL=PLUGIN`` picks one per model.

Loading happens once, at worker start, so a missing or broken plugin stops the start with a
message naming the plugins that are installed, instead of failing requests later.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .interface import IOProcessor, PluginContext

GROUP = "poolworker.io_processors"


def installed() -> dict[str, str]:
    """Plugin name → ``module:Class`` of every installed plugin."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load_processor(name: str, context: PluginContext) -> IOProcessor:
    """The plugin ``name`` built for ``context``. An entry point may name the class itself or a
    function returning the class (vLLM's plugins return a qualified name: accepted too)."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        available = ", ".join(sorted(installed())) or "none"
        raise ValueError(f"--io-processor: no plugin named {name!r} is installed (entry point group {GROUP}; "
                         f"installed: {available})")
    target = found[0].load()
    cls = target if isinstance(target, type) else target()
    if isinstance(cls, str):
        from importlib import import_module

        module, _, qualname = cls.rpartition(".")
        cls = getattr(import_module(module), qualname)
    if not (isinstance(cls, type) and issubclass(cls, IOProcessor)):
        raise TypeError(f"--io-processor: plugin {name!r} ({found[0].value}) is not an IOProcessor subclass")
    return cls(context)


__all__ = ["GROUP", "installed", "load_processor"]
