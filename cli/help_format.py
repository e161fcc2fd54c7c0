"""--help without a "<bool>" after flags, which take no value.

Typer 0.29's rich help prints a type after every option, flags included, where its
plain help (like click's) prints none for flags. Flags are shown as bare names here.
"""

from __future__ import annotations

from typer.core import TyperOption


def hide_flag_types() -> None:
    """Make the rich --help show no type after flags (``--trust-pickle``, ``--x/--no-x``, ``--help``).

    Example::

        hide_flag_types()  # once, before the app prints any help
    """
    shown = TyperOption.display_type_rich
    if getattr(shown, "hides_flag_types", False):
        return

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        if self.is_flag or self.count:
            return None
        return shown(self, ctx)

    display_type_rich.hides_flag_types = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
