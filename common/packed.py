"""Per-token data of a chat completion choice as packed arrays (wire v3).

vLLM returns one JSON object per completion token (`token`, `logprob`, `bytes`, `top_logprobs`);
sent as one msgpack map per token that is ~60 bytes and ~20 us of Python per token. Here a
choice's `logprobs.content` travels as a few byte strings instead:

- `ids`: token ids, little-endian uint24 (int32 when one does not fit), when every token is
  exactly `token_id:N` (what ART's vLLM returns), else `tok`: the token strings as a list;
- `lp`/`lpw`: the logprobs, float32 when every value survives float32 bit for bit (vLLM computes
  logprobs in float32 and prints those exact values), else float64: always exact;
- `bl`/`bb`: the `bytes` lists as lengths plus one blob (no blob when it equals the message's
  UTF-8 content, as it does for plain answers), `bn` marking tokens whose `bytes` is null;
- `top`: `top_logprobs` as per-token counts and the same packing of the flattened alternatives;
- `tid`: vLLM's `token_ids` extra field, omitted when it repeats the ids above.

A choice whose per-token entries do not have exactly vLLM's shape travels unpacked (`raw`), so
the round trip is exact for anything JSON can hold. `unpack_choice(pack_choice(c)) == c`.

The per-token loops of the common case run in C (`native/token_columns.c`): packing what vLLM
sends for ART (the Python packer here handles every other shape, and is what the C packer is
tested against), spelling the token strings and cutting the byte blob.
"""

from __future__ import annotations

import sys
from array import array
from functools import reduce
from itertools import chain
from operator import iadd, itemgetter
from types import NoneType
from typing import Any

import token_columns

_PREFIX = "token_id:"
_SEPARATOR = "\0" + _PREFIX
_TOKEN_KEYS = ("token", "logprob", "bytes", "top_logprobs")
_TOP_KEYS = ("token", "logprob", "bytes")
_LITTLE = sys.byteorder == "little"


class PackError(ValueError):
    """Packed per-token data that is inconsistent (wrong lengths, unknown fields)."""


def _all(values: list[Any], cls: type) -> bool:
    """Every value is exactly a `cls` (not a subclass: bool is no int here). Counting in a list
    costs two thirds of `set(map(type, values)) == {cls}`."""
    return list(map(type, values)).count(cls) == len(values)


def _int_list(values: Any) -> bool:
    return type(values) is list and _all(values, int)


def _to_bytes(values: array) -> bytes:
    if not _LITTLE:
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _from_bytes(typecode: str, data: Any, count: int) -> array:
    values = array(typecode)
    if not isinstance(data, bytes) or len(data) != values.itemsize * count:
        raise PackError(f"packed array {typecode!r} holds {len(data or b'')} bytes, not {count}")
    values.frombytes(data)
    if not _LITTLE:
        values.byteswap()
    return values


def _pack_ids(ids: list[int]) -> bytes:
    return _narrowed(_to_bytes(array("i", ids)))


def _narrowed(wide: bytes) -> bytes:
    """Little-endian int32 ids as uint24 when every id fits (vocabularies do: 3 bytes a
    token), else as they are (4 bytes)."""
    count = len(wide) // 4
    if wide[3::4].count(0) != count:
        return wide  # a high byte set: negative or >= 2**24 (a scan in C, not min() and max())
    narrow = bytearray(3 * count)
    for byte in range(3):
        narrow[byte::3] = wide[byte::4]
    return bytes(narrow)


def _unpack_ids(data: Any, count: int) -> array:
    if isinstance(data, bytes) and len(data) == 3 * count and count:
        wide = bytearray(4 * count)
        for byte in range(3):
            wide[byte::4] = data[byte::3]
        data = bytes(wide)
    return _from_bytes("i", data, count)


def _pack_tokens(tokens: list[Any], packed: dict[str, Any], hint: Any) -> list[int] | None:
    """Packs the tokens; returns their ids when they travel as ids."""
    if not _all(tokens, str):
        raise PackError("tokens that are not strings")
    ids = _spelled_ids(tokens, hint)
    if ids is not None:
        try:
            packed["ids"] = _pack_ids(ids)
            return ids
        except OverflowError:
            pass  # outside int32
    packed["tok"] = tokens
    return None


def _spelled_ids(tokens: list[str], hint: Any) -> list[int] | None:
    """The ids whose canonical `token_id:N` spellings are `tokens`; or None. vLLM's `token_ids`
    field (`hint`) usually holds them: checking it is a third of parsing."""
    count = len(tokens)
    joined = "\0".join(tokens)
    if _int_list(hint) and len(hint) == count and _token_text(hint) == joined:
        return hint
    if not joined.startswith(_PREFIX):
        return None
    try:
        ids = list(map(int, joined[len(_PREFIX) :].split(_SEPARATOR)))
    except ValueError:
        return None  # not token_id:N
    # int() also reads "+5", " 5", "5_0", "٥": only the canonical spelling is packed
    return ids if len(ids) == count and _token_text(ids) == joined else None


def _token_text(ids: list[int]) -> str:
    """The `token_id:N` spellings of `ids`, joined by NULs."""
    return _PREFIX + _SEPARATOR.join(map(str, ids)) if ids else ""


def _pack_floats(values: list[Any], packed: dict[str, Any]) -> None:
    if not _all(values, float):
        raise PackError("logprobs that are not floats")  # the choice travels raw
    narrow = array("f", values)  # out of float32's range: inf, not exact, so float64
    # Equal values have equal bits (float32 keeps the sign of zero), but NaN: then the bits
    # decide. Comparing as floats costs half of widening `narrow` back in an array.
    wide = None if narrow.tolist() == values else array("d", values)
    if wide is None or array("d", narrow).tobytes() == wide.tobytes():
        packed["lp"], packed["lpw"] = _to_bytes(narrow), 4
    else:
        packed["lp"], packed["lpw"] = _to_bytes(wide), 8


def _pack_bytes(lists: list[Any], packed: dict[str, Any], content: Any) -> None:
    types = list(map(type, lists))
    nulls = types.count(NoneType)
    if nulls == len(lists):
        return  # no "bl": every token's bytes is null
    if types.count(list) + nulls != len(lists):
        raise PackError("bytes that are not lists")
    # bytes() raises for anything but 0..255 (it takes bools as pydantic's int fields do)
    if nulls:
        packed["bn"] = bytes([b is None for b in lists])
        lists = [[] if b is None else b for b in lists]
    lengths = list(map(len, lists))
    packed["bl"] = _to_bytes(array("B" if max(lengths) < 256 else "I", lengths))
    # one list of all the values (list += list, from C: a quarter less than chaining them)
    blob = bytes(reduce(iadd, lists, []))
    if not (isinstance(content, str) and content.encode("utf-8", "surrogatepass") == blob):
        packed["bb"] = blob


def _pack_entries(
    entries: list[Any], keys: tuple[str, ...], content: Any, hint: Any = None
) -> tuple[dict[str, Any], list[int] | None]:
    """The packed columns, and the token ids when they travel as ids."""
    if not _all(entries, dict) or list(map(len, entries)).count(len(keys)) != len(entries):
        raise PackError("not vLLM's per-token shape")  # then KeyError if a key is not ours
    packed: dict[str, Any] = {"n": len(entries)}
    ids = _pack_tokens(list(map(itemgetter("token"), entries)), packed, hint)
    _pack_floats(list(map(itemgetter("logprob"), entries)), packed)
    _pack_bytes(list(map(itemgetter("bytes"), entries)), packed, content)
    return packed, ids


def _pack_common(columns: tuple[bytes, bytes, int, bytes, bytes], text: Any) -> dict[str, Any]:
    """The packed form of what `token_columns.pack_entries` gave (the common shape)."""
    ids, lp, width, lengths, blob = columns
    packed = {"n": len(ids) // 4, "ids": _narrowed(ids), "lp": lp, "lpw": width, "bl": lengths}
    if not (isinstance(text, str) and text.encode("utf-8", "surrogatepass") == blob):
        packed["bb"] = blob
    return packed


def pack_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A raw `choices[0]` dict -> its packed form (a msgpack-ready dict)."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if type(logprobs) is dict else None
    if type(content) is not list or not content:
        return {"raw": choice}
    message = choice.get("message")
    text = message.get("content") if type(message) is dict else None
    hint = choice.get("token_ids")
    columns = token_columns.pack_entries(content, hint)
    if columns is not None:  # what the Python packer below gives for this shape, ~10x sooner
        return _with_head(_pack_common(columns[:5], text), choice, logprobs, columns[5])
    try:
        packed, ids = _pack_entries(content, _TOKEN_KEYS, text, hint)
        tops = list(map(itemgetter("top_logprobs"), content))
        if not _all(tops, list):
            raise PackError("top_logprobs that are not lists")
        if any(tops):
            packed["tc"] = _to_bytes(array("I", list(map(len, tops))))
            packed["top"] = _pack_entries(list(chain.from_iterable(tops)), _TOP_KEYS, None)[0]
    except (PackError, KeyError, TypeError, ValueError, OverflowError):
        return {"raw": choice}
    # `ids` are what the packed ids decode to (they are the hint itself, usually)
    return _with_head(packed, choice, logprobs, ids is not None and _int_list(hint) and hint == ids)


def _with_head(
    packed: dict[str, Any], choice: dict[str, Any], logprobs: dict[str, Any], tid: bool
) -> dict[str, Any]:
    """`tid`: the choice's `token_ids` equal the packed ids (then they are not sent twice)."""
    head = dict(choice)
    head["logprobs"] = {k: v for k, v in logprobs.items() if k != "content"}
    if tid and "token_ids" in head:
        del head["token_ids"]
        packed["tid"] = True
    packed["head"] = head
    return packed


def _ids(packed: dict[str, Any]) -> array:
    return _unpack_ids(packed["ids"], packed["n"])


_COLUMN_KEYS = frozenset({"n", "ids", "tok", "lp", "lpw", "bl", "bb", "bn"})
_CHOICE_KEYS = _COLUMN_KEYS | {"tc", "top", "tid", "head"}


def check_keys(packed: Any) -> None:
    """A packed choice holds only the fields `pack_choice` writes (strict, like the models)."""
    if type(packed) is not dict:
        raise PackError("a packed choice is a map")
    unknown = set(packed) - ({"raw"} if "raw" in packed else _CHOICE_KEYS)
    if unknown:
        raise PackError(f"packed choice with unknown fields {sorted(map(str, unknown))}")
    if "raw" in packed and type(packed["raw"]) is not dict:
        raise PackError("a raw choice is a map")


class Columns:
    """Unpacked per-token columns of one choice (or of its flattened top_logprobs)."""

    __slots__ = ("bytes", "logprobs", "tokens")

    def __init__(self, packed: dict[str, Any], head: dict[str, Any] | None) -> None:
        """`head`: what `head_of` gave for the choice (its message text serves);
        None for the flattened top_logprobs."""
        if type(packed) is not dict:
            raise PackError("packed columns are a map")
        count = packed.get("n")
        if type(count) is not int or count < 0:
            raise PackError("packed entries without a count")
        if "ids" in packed:
            if type(packed["ids"]) is not bytes:
                raise PackError("packed array 'ids' that is not bytes")
            try:
                self.tokens: list[Any] = token_columns.token_strings(packed["ids"], count)
            except ValueError as exc:
                raise PackError(f"packed array 'ids': {exc}") from exc
        elif (
            type(packed.get("tok")) is list
            and len(packed["tok"]) == count
            and all(type(t) is str for t in packed["tok"])
        ):
            self.tokens = packed["tok"]
        else:
            raise PackError("packed entries without tokens")
        width = packed.get("lpw")
        if width not in (4, 8):
            raise PackError(f"logprob width {width!r}")
        typecode = "f" if width == 4 else "d"
        self.logprobs: list[float] = _from_bytes(typecode, packed.get("lp"), count).tolist()
        self.bytes = self._bytes(packed, None if head is None else message_text(head), count)

    @staticmethod
    def _bytes(packed: dict[str, Any], content: Any, count: int) -> list[list[int] | None]:
        if "bl" not in packed:
            return [None] * count
        raw = packed["bl"]
        if "bb" in packed:
            blob = packed["bb"]
        elif isinstance(content, str):
            blob = content.encode("utf-8", "surrogatepass")
        else:
            raise PackError("token bytes taken from a message without content")
        if not isinstance(raw, bytes) or len(raw) not in (count, 4 * count):
            raise PackError(f"packed array 'bl' holds {len(raw or b'')} bytes for {count} tokens")
        if not isinstance(blob, bytes):
            raise PackError("token bytes blob that is not bytes")
        try:  # a new list per token, from C (the ints 0..255 are Python's cached ones)
            out = token_columns.split_bytes(blob, raw, 1 if len(raw) == count else 4)
        except ValueError as exc:
            raise PackError("token bytes do not add up to their blob") from exc
        if "bn" in packed:
            mask = packed["bn"]
            if not isinstance(mask, bytes) or len(mask) != count:
                raise PackError("null-bytes mask of the wrong length")
            out = [None if null else b for null, b in zip(mask, out, strict=True)]
        return out


def top_counts(packed: dict[str, Any]) -> list[int] | None:
    """Per-token number of top_logprobs alternatives, or None when every list is empty."""
    if "tc" not in packed:
        return None
    counts = _from_bytes("I", packed["tc"], packed["n"]).tolist()
    top = packed.get("top")
    if type(top) is not dict or not set(top) <= _COLUMN_KEYS or sum(counts) != top.get("n"):
        raise PackError("top_logprobs counts do not add up")
    return counts


def head_of(packed: dict[str, Any]) -> dict[str, Any]:
    """The choice without its per-token entries (`token_ids` restored when it was omitted)."""
    head = packed.get("head")
    if type(head) is not dict or type(head.get("logprobs")) is not dict:
        raise PackError("packed choice without its head")
    head = dict(head)
    if packed.get("tid"):
        head["token_ids"] = _ids(packed).tolist()
    return head


def message_text(head: dict[str, Any]) -> Any:
    message = head.get("message")
    return message.get("content") if type(message) is dict else None


def unpack_choice(packed: dict[str, Any]) -> dict[str, Any]:
    """The exact raw `choices[0]` dict that `pack_choice` packed (slow path: plain dicts)."""
    check_keys(packed)
    if "raw" in packed:
        return packed["raw"]
    head = head_of(packed)
    cols = Columns(packed, head)
    counts = top_counts(packed)
    tops: list[list[dict[str, Any]]]
    if counts is None:
        tops = [[] for _ in range(packed["n"])]
    else:
        alt = Columns(packed["top"], None)
        flat = [
            {"token": t, "logprob": lp, "bytes": b}
            for t, lp, b in zip(alt.tokens, alt.logprobs, alt.bytes, strict=True)
        ]
        tops, at = [], 0
        for count in counts:
            tops.append(flat[at : at + count])
            at += count
    content = [
        {"token": t, "logprob": lp, "bytes": b, "top_logprobs": top}
        for t, lp, b, top in zip(cols.tokens, cols.logprobs, cols.bytes, tops, strict=True)
    ]
    head["logprobs"] = {**head["logprobs"], "content": content}
    return head
