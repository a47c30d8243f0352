"""A model-based test of personal data (Hypothesis): writes, reads from two processes'
stores, forgets and master key rotations mixed at random; every read agrees with a model
of which data keys were destroyed, and Redis never holds a written value in plain text."""

from __future__ import annotations

from typing import Annotated

import fakeredis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from es_workers import Content, MasterKeys, Personal, RedisStorage, Store
from es_workers.encryption import new_master_key
from es_workers.forgetting import FORGOTTEN_TYPE
from es_workers.personal import FORGOTTEN_TEXT

SUBJECTS = st.sampled_from(["ada", "bob", "cy"])


class Noted(Content):
    text: Annotated[str, Personal]
    number: int


class PersonalData(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.client = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))
        self.keys = [new_master_key()]
        self.stores = self._stores()
        # Per subject: (text, generation of its data key) of each event, in order.
        self.events: dict[str, list[tuple[str, int]]] = {}
        self.generation: dict[str, int] = {}  # the subject's current key generation
        self.destroyed: dict[str, int] = {}  # keys destroyed per subject
        self.written = 0

    def _stores(self) -> list[Store]:
        master = MasterKeys(self.keys[-1], self.keys[:-1])
        return [Store(RedisStorage(self.client, prefix="m", encryption=master),
                      events={"note": [Noted]}) for _ in range(2)]

    @rule(subject=SUBJECTS, writer=st.integers(0, 1))
    def write(self, subject: str, writer: int) -> None:
        self.written += 1
        text = f"secret-{self.written:04d}-{subject}"
        with self.stores[writer].open("note", subject) as stream:
            list(stream.all())
            stream.write(Noted(text=text, number=self.written))
        self.events.setdefault(subject, []).append((text, self.generation.get(subject, 0)))

    @rule(subject=SUBJECTS, reader=st.integers(0, 1))
    def read(self, subject: str, reader: int) -> None:
        read = list(self.stores[reader].open("note", subject).all())
        expected = self.events.get(subject, [])
        assert len(read) == len(expected)
        for event, (text, generation) in zip(read, expected, strict=True):
            gone = generation < self.destroyed.get(subject, 0)
            assert event.forgotten == gone
            assert event.content.text == (FORGOTTEN_TEXT if gone else text)

    @rule(subject=SUBJECTS, forgetter=st.integers(0, 1))
    def forget(self, subject: str, forgetter: int) -> None:
        count = self.stores[forgetter].forget(subject)
        if self.generation.get(subject, 0) == self.destroyed.get(subject, 0) and any(
            generation == self.generation.get(subject, 0)
            for _, generation in self.events.get(subject, [])
        ):  # it had a live key: destroyed, and the next write makes a new one
            self.destroyed[subject] = self.destroyed.get(subject, 0) + 1
            self.generation[subject] = self.destroyed[subject]
        assert count == self.destroyed.get(subject, 0)
        notices = list(self.stores[forgetter].open(FORGOTTEN_TYPE, subject).all())
        assert len(notices) == count

    @rule()
    def rotate(self) -> None:
        self.keys.append(new_master_key())
        self.stores = self._stores()
        self.stores[0].rotate_keys()
        self.keys = self.keys[-1:]  # the older keys dropped: everything was re-wrapped
        self.stores = self._stores()

    @invariant()
    def no_plain_text(self) -> None:
        for key in self.client.scan_iter("*"):
            if self.client.type(key) == b"stream":
                for _, fields in self.client.xrange(key):
                    assert b"secret-" not in fields.get(b"d", b"")


TestPersonalData = PersonalData.TestCase
TestPersonalData.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
