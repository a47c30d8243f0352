"""How Redis errors become es_workers errors (`es_workers.redis.failures.translated`)."""

from __future__ import annotations

import pytest
import redis

from es_workers import StorageUnavailableError
from es_workers.redis.failures import translated

DEMOTED = ("WAIT cannot be used with replica instances. Please also note that since Redis "
           "4.0 if a replica is configured to be writable (which is not the default) writes "
           "to replicas are just local and are not propagated.")


@pytest.mark.parametrize("writing", [True, False])
def test_a_wait_on_a_master_demoted_by_a_failover_is_an_outage(writing: bool) -> None:
    """A failover demoted the master between a write and its WAIT (seen in a Sentinel
    failover test): the store is failing over, and the write's outcome is unknown."""
    with pytest.raises(StorageUnavailableError) as raised, translated(
            "sentinel master 'm'", "appending", writing=writing):
        raise redis.ResponseError(DEMOTED)
    assert raised.value.outcome_unknown is writing


def test_other_response_errors_pass_through() -> None:
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"), translated("x:1/0", "reading"):
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
