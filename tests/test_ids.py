"""Store IDs (es_workers.ids): UUIDv7, strictly increasing in a process, near the clock."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from es_workers.ids import new_ids


def unix_ms(store_id: str) -> int:
    return uuid.UUID(store_id).int >> 80


def test_ids_are_uuid7_strings_in_canonical_form() -> None:
    for store_id in new_ids(50):
        parsed = uuid.UUID(store_id)
        assert str(parsed) == store_id
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_increase_strictly_within_and_across_calls() -> None:
    ids = new_ids(5_000) + new_ids(1) + new_ids(3)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_made_by_racing_threads_are_unique_and_each_thread_sees_them_increase() -> None:
    made: list[list[str]] = []

    def make() -> None:
        made.append([store_id for _ in range(500) for store_id in new_ids(2)])

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(ids == sorted(ids) for ids in made)
    assert len({store_id for ids in made for store_id in ids}) == 8 * 1000


def test_many_ids_keep_the_clock_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_ids(20_000)  # a generator that moves 1 ms per ID would run 20 s ahead
    after = time.time_ns() // 1_000_000

    assert before <= unix_ms(ids[0])
    assert unix_ms(ids[-1]) <= after + 20_000 // 4096 + 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_makes_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, ",".join(new_ids(20)).encode())
        os._exit(0)
    os.close(write)
    parent = new_ids(20)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)

    random_part = {store_id[19:] for store_id in parent}
    assert len(child) == 20
    assert not random_part & {store_id[19:] for store_id in child}
