"""How messages and reprs write a duration or a timeout (in seconds).

Ordinary values read as they always did (``0.050 s``, ``timeout 0.05 s``, ``in 12.5 ms``);
a value too small for that unit is written in µs or ns rather than as ``0.000 s`` or
``1e-09 s``, and one of a million seconds or more as a plain number (``1000000 s``), not
``1e+06 s``.
"""

from __future__ import annotations


def _small(seconds: float, exact: bool) -> str:
    """``seconds`` (under a millisecond) in µs, or below a µs in ns: a timeout as given
    (``exact``: ``2.25 µs``), a measured duration to two digits (``1.2 µs``, ``25 µs``)."""
    value, unit = (seconds * 1e6, "µs") if seconds >= 1e-6 else (seconds * 1e9, "ns")
    if exact:
        return f"{value:g} {unit}"
    return f"{value:.2g} {unit}" if value < 10 else f"{value:.0f} {unit}"


# From here a float no longer holds every whole second: Python's repr turns to exponent
# form, and so does :func:`seconds_number` (1e23 written out is 99999999999999991611392).
_WHOLE_SECONDS_END = 1e16


def seconds_number(seconds: float) -> str:
    """``seconds`` as given, without its unit: ``0.05``, ``30``, ``86400`` (``:g``, six
    digits), and from a million on in whole seconds, ``1000000``, ``1234568``, where
    ``:g`` writes ``1e+06`` and ``1.23457e+06``. (Under 1e-4 it keeps ``:g``'s ``1e-05``:
    :func:`timeout_text` writes those in µs or ns.)"""
    text = f"{seconds:g}"
    if "e+" in text and seconds < _WHOLE_SECONDS_END:
        return f"{seconds:.0f}"
    return text


def duration_text(seconds: float) -> str:
    """A measured duration as an error message writes it: ``0.050 s``, ``25 µs``."""
    if 0 < seconds < 0.001:
        return _small(seconds, exact=False)
    return f"{seconds:.3f} s"


def duration_ms(seconds: float) -> str:
    """A measured duration as a record's repr or table writes it: ``12.5 ms``, ``25 µs``."""
    if 0 < seconds < 0.0001:
        return _small(seconds, exact=False)
    return f"{seconds * 1000:.1f} ms"


def timeout_text(seconds: float, space: str = " ") -> str:
    """A timeout as given: ``0.05 s``, ``30 s``, ``1000000 s``, ``500 µs``, ``1 ns``
    (``space`` between the number and its unit: ``""`` for ``timeout=30s``). Any number
    of seconds a message or a repr writes, a lease or a wait, is written so too."""
    text = _small(seconds, exact=True) if 0 < seconds < 0.001 else f"{seconds_number(seconds)} s"
    return text.replace(" ", space)
