"""One decoder of stored entries: EntityPages decodes entries as append.lua writes them inline
(the fast path hydrating takes) and anything else through `_decode` (the slow path, which
names what is wrong). Both must give the same events and the same errors: Hypothesis fuzzes
entries (fields reordered, missing or extra, values out of range or not UTF-8, IDs out of
sequence, with and without log numbers and metadata, as bytes and as text) and compares
the fast path with `_decode` applied to each entry.
"""

from __future__ import annotations

from typing import Any

from conftest import ACCOUNT_EVENTS
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from es_workers.codec import ContentRegistry
from es_workers.metadata import encode as encode_metadata
from es_workers.redis.entries import EntityPages, _pairs

REGISTRY = ContentRegistry()
REGISTRY.register("account", *ACCOUNT_EVENTS["account"])
KEY = "t:{p0}:stream:account:a1"
FIELDS = ("n", "d", "t", "e", "p", "m")

names = st.sampled_from(["Opened", "Deposited", "Withdrawn", "Unknown", "", "\udcff"])
datas = st.sampled_from(['{"owner": "a"}', '{"amount": 1}', '{"amount": 1.5}', "{", "null",
                         '{"amount": 1, "x": 2}', ""])
micros = st.one_of(
    st.integers(-(2**62), 2**62).map(str),
    st.integers(0, 2**53).map(str),  # the years 1970 to 2255
    st.integers(2**53, 253402300799999999).map(str),  # 2255 to 9999
    st.sampled_from(["1.5e15", "", " 1", "9" * 20, "-0", "+7"]),
)
ids = st.sampled_from(["01890a5d-ac96-774b-bcce-b302099a8057", "", "x", "\udcff"])
logged = st.one_of(st.integers(-2, 2**40).map(str), st.sampled_from(["", "a", " 3"]))
metadatas = st.one_of(st.just(""), st.sampled_from([
    encode_metadata({"k": "v"}), "[1]", '{"k": 1}', "{", '{"k": "v"}{}']))


@st.composite
def entry(draw: st.DrawFn, entry_id: str) -> tuple[str, list[str]]:
    """An entry as append.lua writes it, or changed."""
    name, data = draw(st.one_of(  # mostly a content that decodes
        st.sampled_from([("Opened", '{"owner": "a"}'), ("Deposited", '{"amount": 1}')]),
        st.tuples(names, datas)))
    values = {"n": name, "d": data, "t": draw(micros), "e": draw(ids)}
    if draw(st.booleans()):
        values["p"] = draw(logged)
    if draw(st.booleans()):
        values["m"] = draw(metadatas)
    order = [name for name in FIELDS if name in values]
    change = draw(st.sampled_from(["none", "none", "none", "shuffle", "drop", "extra"]))
    if change == "shuffle":
        order = draw(st.permutations(order))
    elif change == "drop":
        order.remove(draw(st.sampled_from(order)))
    elif change == "extra":
        order.insert(draw(st.integers(0, len(order))), "x")
        values["x"] = "1"
    return entry_id, [part for name in order for part in (name, values[name])]


@st.composite
def pages(draw: st.DrawFn) -> tuple[int, str | None, list[Any]]:
    """(the number read after, event 1's ID if known, the entries) as bytes or as text."""
    after = draw(st.sampled_from([0, 0, 1, 5]))
    # Stream IDs as XRANGE from `after + 1` gives them: increasing, mostly the next event
    # number's, some skipping a number or with a sequence number other than 0.
    stream_ids: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(1, 4))):
        number, sequence = stream_ids[-1] if stream_ids else (after, 0)
        step = draw(st.sampled_from([1, 1, 1, 1, 2, 0]))
        later = draw(st.sampled_from([0, 0, 0, 1])) if step else sequence + 1
        stream_ids.append((number + step, later))
    entries = [draw(entry(f"{n}-{q}")) for n, q in stream_ids]
    if draw(st.booleans()):  # a client without decode_responses
        entries = [(entry_id.encode(), [v.encode(errors="surrogateescape") for v in values])
                   for entry_id, values in entries]
    else:  # text: a value that is not UTF-8 cannot be one
        entries = [(i, [v.encode(errors="surrogateescape").decode(errors="replace")
                        for v in values]) for i, values in entries]
    known = draw(st.sampled_from([None, "", "01890a5d-ac96-774b-bcce-b302099a8057"]))
    return after, known, entries


def outcome(events: Any) -> tuple[list[tuple[Any, ...]], tuple[str, str] | None]:
    """The events, as tuples, up to the first error, and that error."""
    found: list[tuple[Any, ...]] = []
    try:
        for event in events:
            found.append((event.entity_id, event.entity_type, event.event_number,
                          event.event_time, event.content, event.store_event_id,
                          event.store_entity_id, dict(event.metadata), event.position))
    except Exception as error:
        return found, (type(error).__name__, str(error))
    return found, None


def new_pages(after: int, known: str | None) -> EntityPages:
    made = EntityPages(REGISTRY, KEY, "account", "a1", after, partition=3)
    made.store_entity_id = known
    return made


def slow(after: int, known: str | None, entries: list[Any]) -> Any:
    """`_decode` on each entry, in sequence."""
    reference = new_pages(after, known)
    for index, (entry_id, values) in enumerate(entries):
        event = reference._decode((entry_id, _pairs(values)), after + 1 + index)
        reference.store_entity_id = event.store_entity_id
        yield event


OPENED = ["n", "Opened", "d", '{"owner": "a"}', "t", "0", "e", "x"]


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(pages())
# What it found in the fast path (each gave another event than `_decode`): a time past 2255
# (float seconds are not exact there), a log number 0, and an ID whose sequence number is
# not 0 letting an entry out of sequence pass as the next event.
@example((0, None, [("1-0", [*OPENED[:5], "36724149060599165", *OPENED[6:]])]))
@example((0, None, [("1-0", [*OPENED, "p", "0"])]))
@example((0, None, [("1-0", OPENED), ("3-0", OPENED), ("3-1", OPENED)]))
def test_the_fast_path_decodes_every_entry_as_the_slow_path_does(
    page: tuple[int, str | None, list[Any]],
) -> None:
    after, known, entries = page
    fast = outcome(new_pages(after, known).events(entries))
    assert fast == outcome(slow(after, known, entries))
