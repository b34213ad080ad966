"""How a run's attributes are stored (format: store/format.py): text as
fixed-length UTF-8, a list of numbers or of text as an HDF5 array, anything
else JSON text; and what is refused because HDF5 would refuse it or, worse,
store something else (a NUL ends a fixed-length string and a name)."""
from __future__ import annotations

import json

import h5py
import numpy as np

from .format import RESERVED


def encode_attrs(attrs: dict) -> dict:
    """``attrs`` as HDF5 attribute values, plus ``json_attrs`` naming the JSON
    ones; ValueError or TypeError (one line naming the key) for a key or
    value that cannot be stored."""
    stored, json_keys = {}, []
    for key, value in attrs.items():
        if key in RESERVED:
            raise ValueError(f"attrs key {key!r} is reserved; the writer sets it")
        if not isinstance(key, str) or not key or "\x00" in key or not _is_unicode(key):
            # HDF5 would cut a name at a NUL, unseen
            raise ValueError(f"attrs key {key!r} must be non-empty Unicode text without NUL")
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str):
            stored[key] = _text_attr(key, value)
        elif isinstance(value, (bool, int, float)):
            stored[key] = value
        elif isinstance(value, (list, tuple)) and _as_array(value) is not None:
            stored[key] = _as_array(value)
        elif value is None or isinstance(value, (dict, list, tuple)):
            stored[key] = fixed_text(json.dumps(value, default=_json_default))
            json_keys.append(key)
        else:
            raise TypeError(f"attrs[{key!r}]: cannot store a {type(value).__name__}")
    stored["json_attrs"] = fixed_text(json.dumps(json_keys))
    return stored


def fixed_text(value: str | list[str]) -> np.ndarray:
    """Text as a fixed-length UTF-8 HDF5 string (or array of them), stored in
    the attribute itself.  Not variable-length strings: those live in the
    file's global heap, which has no checksum, and a damaged global heap
    makes HDF5 loop forever on any string in the file (measured: zeroed
    bytes in it hung even reading the root's attributes)."""
    raw = value.encode("utf-8") if isinstance(value, str) else [v.encode("utf-8") for v in value]
    longest = max([len(raw)] if isinstance(raw, bytes) else [len(r) for r in raw] or [1])
    return np.array(raw, dtype=h5py.string_dtype("utf-8", max(longest, 1)))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_attr(key, value: str | list[str]) -> np.ndarray:
    for text in [value] if isinstance(value, str) else value:
        if "\x00" in text:  # a fixed-length string ends at its first NUL: the rest would be lost unseen
            raise ValueError(f"attrs[{key!r}]: text with a NUL character cannot be stored")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"attrs[{key!r}]: text that is not valid Unicode cannot be stored ({error})") from None
    return fixed_text(value)


def _as_array(value: list | tuple) -> np.ndarray | None:
    """A non-empty list of str, or a rectangular (nested) list whose items are
    all bool, all int (int64) or all float, as the array it reads back from
    exactly; None for anything else (stored as JSON)."""
    leaves, pending = [], [value]
    while pending:
        item = pending.pop()
        if isinstance(item, (list, tuple)):
            pending.extend(item)
        else:
            leaves.append(item)
    kinds = {type(leaf) for leaf in leaves}
    if not leaves or len(kinds) != 1 or kinds.pop() not in (str, bool, int, float):
        return None
    if isinstance(leaves[0], str):
        if any(isinstance(item, (list, tuple)) for item in value):
            return None
        return _text_attr("a list", value)
    try:
        array = np.array(value)
    except (ValueError, OverflowError):  # ragged; an int beyond int64
        return None
    # the kind must be the leaves' own: numpy turns ints beyond int64 into float64, equal but read back as floats
    kind = {bool: "b", int: "i", float: "f"}[type(leaves[0])]
    if array.dtype.kind != kind or array.size != len(leaves) or array.tolist() != _as_lists(value):
        return None
    return array


def _as_lists(value):
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _json_default(obj):
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in a JSON attribute")
