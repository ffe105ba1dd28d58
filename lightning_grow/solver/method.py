"""The growth methods, and the string-valued enum that every vocabulary of the package follows."""

from __future__ import annotations

from enum import Enum
from typing import Literal, TypeVar

__all__ = ["Method", "MethodName", "Vocabulary"]

_V = TypeVar("_V", bound="Vocabulary")


class Vocabulary(str, Enum):
    """A closed set of names whose values are what gets logged and saved.

    Members compare equal to their values (``Method.TINY == "tiny"``) and print as them on every
    Python version, so logs, tables and checkpoints hold the same plain strings as before; code
    that stores a member in a record stores ``member.value``.
    """

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The members' values, in definition order."""
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls: type[_V], value: object, what: str) -> _V:
        """The member whose value is ``value``, or a ``ValueError`` naming ``what`` and the
        valid values (``"method must be 'tiny', 'gradmax' or 'random', got 'x'"``)."""
        try:
            return cls(value)
        except ValueError:
            *head, last = (repr(v) for v in cls.values())
            valid = f"{', '.join(head)} or {last}" if head else last
            raise ValueError(f"{what} must be {valid}, got {value!r}") from None


class Method(Vocabulary):
    """How new neurons are initialised (where and how many is TINY's analysis for every method)."""

    TINY = "tiny"  # the optimal neurons, scaled by a line search
    GRADMAX = "gradmax"  # α = 0, ω from the gradient correlation
    RANDOM = "random"  # Kaiming α, ω = 0


#: The same names as a ``Literal``, for signatures that the CLI (jsonargparse) reads.
MethodName = Literal["tiny", "gradmax", "random"]
