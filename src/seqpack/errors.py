"""The one error type for bad input, and how the command line reports it.

A user who points seqpack at a bad file, a bad flag value or an impossible layout gets
`InputError`: a one-line message that names the value, where it is (file, line or row,
column) and the fix. The command line prints that line and exits with status 2, without a
traceback (``seqpack --debug ...`` shows one). In Python it is a `ValueError`, so code that
already catches `ValueError` keeps working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the value, where it is and the fix, on one line."""


def where(path=None, line=None, row=None, column=None) -> str:
    """``"data.jsonl line 17, column 'input_ids'"``: the location part of a message."""
    parts = []
    if path is not None:
        parts.append(str(path))
    if line is not None:
        parts.append(f"line {line:,}")
    if row is not None:
        parts.append(f"row {row:,}")
    text = " ".join(parts)
    if column is not None:
        text = f"{text}, column {column!r}" if text else f"column {column!r}"
    return text


def renamed_keyword(new_value, old_value, old: str, new: str, where: str):
    """``new_value``, or ``old_value`` (with a DeprecationWarning) when only the old keyword
    was given: keeps the keyword names users may already pass working after a rename."""
    if old_value is None:
        return new_value
    import warnings

    warnings.warn(f"{where}({old}=...) is deprecated: pass {new}=", DeprecationWarning, stacklevel=3)
    if new_value is not None:
        raise InputError(f"{where}: pass {new} only ({old} is its old name)")
    return old_value
