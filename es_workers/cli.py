"""`es-workers`: run the publisher and the workers of an app, inspect and repair delivery.

APP is `module:attribute` naming the app's `Store` (e.g. `examples.bank:store`); the module
is imported with the current directory on `sys.path` and registers its subscribers when
imported. Settings come from `ES_...` environment variables and `config/es.toml` (see
`es_workers.settings`). Exit codes: 0 done, 1 failed, 2 bad usage or settings.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from .errors import ConfigurationError, EsError, UnknownNameError

# Start-up time, not an import cycle: `es-workers --version` and `--help` answer without
# loading Redis, Dramatiq, pydantic-settings and the store (about a second), so each
# command imports those in its body. Here they are for type checkers only.
if TYPE_CHECKING:
    from rich.table import Table

    from .admin import ParkedEntity, StoreStatus
    from .event import Event
    from .health import Thresholds
    from .redis.recorder_archiver import RecorderArchiver
    from .redis.storage import RedisStorage
    from .settings import Settings
    from .store import Store

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHECK = 3  # status --check: past a threshold (health says unhealthy with 1, as Docker wants)
TRACEBACK_LINES_IN_STATUS = 8  # last lines of a parked entity's traceback `status` shows

log = logging.getLogger("es_workers.cli")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

app = typer.Typer(
    name="es-workers",
    help="Event sourcing on Redis with Dramatiq workers: run, inspect and repair an app.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
parked_app = typer.Typer(
    help="Entities a subscriber gave up on after max_attempts: list, retry or skip them.",
    no_args_is_help=True,
)
app.add_typer(parked_app, name="parked")


def print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"es-workers {__version__}")
        raise typer.Exit()


@app.callback()
def common_options(
    version: Annotated[
        bool, typer.Option("--version", callback=print_version, is_eager=True,
                           help="Print the version of es_workers and exit")
    ] = False,
) -> None:
    """Event sourcing on Redis with Dramatiq workers: run, inspect and repair an app."""

AppRef = Annotated[
    str,
    typer.Argument(
        metavar="APP", help="module:attribute naming the Store, e.g. examples.bank:store"
    ),
]
SubscriberId = Annotated[
    str, typer.Argument(metavar="SUBSCRIBER", help="The subscriber ID (its Dramatiq queue)")
]
EntityType = Annotated[
    str, typer.Argument(metavar="ENTITY_TYPE", help="The entity type, e.g. account")
]
EntityId = Annotated[str, typer.Argument(metavar="ENTITY_ID", help="The entity ID")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed "
                                   "without a terminal)")]
Embedded = Annotated[bool, typer.Option(
    "--embedded", help="Run on the embedded Redis of this process when ES_REDIS_URL is not "
    "set (it is empty: without this flag the command refuses it)")]


# -- Helpers shared by the commands --------------------------------------------------------

def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"error: {message}", style="red", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    """Reads and checks the settings, and configures logging from them."""
    from .observability import configure_logging
    from .settings import load_settings, warn_unknown_variables

    try:
        settings = load_settings(report_unknown=False)
    except ConfigurationError as error:
        configure_logging("WARNING")
        warn_unknown_variables()  # a typo may be why
        fail(str(error), EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format)
    warn_unknown_variables()  # in the format just chosen
    return settings


def confirm_or_exit(question: str, yes: bool) -> None:
    """Asks on the terminal unless --yes; without a terminal, refuses (a script or a cron
    job must say --yes: nothing destructive runs on a guess)."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question} Refusing without confirmation: no terminal to ask on. Pass --yes.",
             EXIT_USAGE)
    if not typer.confirm(question, default=False, err=True):
        fail("cancelled: nothing changed")


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turns the errors a user can act on into one clear line and an exit code."""
    import redis

    try:
        yield
    except (ConfigurationError, UnknownNameError) as error:
        fail(str(error), EXIT_USAGE)
    except EsError as error:
        fail(str(error))
    except redis.ConnectionError as error:
        fail(f"cannot reach Redis: {error}")
    except redis.RedisError as error:
        fail(f"Redis: {type(error).__name__}: {error}")


def load_app(ref: str, *, embedded: bool = False) -> Store:
    """Imports `module:attribute` (current directory on sys.path) and returns the Store.

    A Store on the embedded Redis (no ES_REDIS_URL, or a misspelled one) is refused unless
    `embedded`: a command would run on an empty store (and `status --check` pass)."""
    from .store import Store

    module_name, _, attribute = ref.partition(":")
    if not module_name or not attribute:
        fail(f"APP must be 'module:attribute' naming a Store (e.g. examples.bank:store), "
             f"not {ref!r}", EXIT_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    with reported_errors():
        module = import_app_module(module_name)
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            fail(f"module {module_name!r} has no attribute {attribute!r}", EXIT_USAGE)
        target = getattr(target, part)
    if not isinstance(target, Store):
        fail(f"{ref} is a {type(target).__name__}, not an es_workers.Store", EXIT_USAGE)
    if on_embedded_redis(target) and not embedded:
        refuse_embedded()
    return target


def on_embedded_redis(store: Store) -> bool:
    from .redis.storage import RedisStorage

    storage = store.storage
    return isinstance(storage, RedisStorage) and type(storage.client).__module__.startswith(
        "fakeredis")


def refuse_embedded() -> NoReturn:
    from .settings import unknown_variables

    typos = "".join(f"; {name} is set: did you mean {near}?"
                    for name, near in unknown_variables().items() if near)
    fail(f"no Redis server to run on: ES_REDIS_URL is not set (nor ES_REDIS_SENTINELS){typos}, "
         "so the app's store is an empty embedded Redis inside this process. Set "
         "ES_REDIS_URL to the app's Redis; the admin commands (status, show, health, rebuild, "
         "replay, parked, forget, keys rotate) take --embedded to use the embedded one on "
         "purpose (`es-workers demo` runs on one).",
         EXIT_USAGE)


def import_app_module(module_name: str) -> object:
    """Imports the app's module. Its own failure is one line plus its traceback (without
    the frames of the CLI and of importlib); es_workers errors go to `reported_errors`."""
    import redis

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name + ".").startswith(error.name + "."):
            fail(f"cannot import {module_name!r} ({error}): run from the directory that "
                 "holds it, or add that directory to PYTHONPATH", EXIT_USAGE)
        app_failed(module_name, error)  # the app itself failed to import something
    except (EsError, redis.RedisError):
        raise
    except Exception as error:
        app_failed(module_name, error)


def app_failed(module_name: str, error: BaseException) -> NoReturn:
    frames = [
        frame for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename != __file__ and not frame.filename.startswith("<frozen importlib")
        and os.path.join("importlib", "__init__.py") not in frame.filename
    ]
    lines = ["Traceback of the app (most recent call last):\n",
             *traceback.format_list(frames), *traceback.format_exception_only(error)]
    err.print("".join(lines).rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
    fail(f"importing the app module {module_name!r} failed: {type(error).__name__}: {error}",
         EXIT_USAGE)


def require_shared_redis(store: Store, command: str) -> None:
    """The publisher and workers are separate processes: they need a Redis they share."""
    from .redis.storage import RedisStorage

    storage = store.storage
    if not isinstance(storage, RedisStorage):
        fail(f"`{command}` needs a Store on RedisStorage, not {type(storage).__name__}",
             EXIT_USAGE)
    if on_embedded_redis(store):
        fail(f"`{command}` needs a Redis server other processes can reach: ES_REDIS_URL is "
             "not set, so the store lives in an embedded Redis inside this process. Set "
             "ES_REDIS_URL, or try `es-workers demo`.", EXIT_USAGE)


def check_bus(store: Store, settings: Settings) -> None:
    """A RabbitMQ broker that refuses this process is one line and exit 2, not a retry
    logged forever."""
    from .wiring import check_broker
    from .workers.bus import DramatiqEventBus

    if isinstance(store.bus, DramatiqEventBus):
        with reported_errors():
            check_broker(store.bus.broker, settings.broker_url)


def describe(store: Store) -> str:
    from redis.cluster import RedisCluster

    from .redis.cluster import masters
    from .redis.storage import RedisStorage

    storage = store.storage
    if not isinstance(storage, RedisStorage):
        return type(storage).__name__
    if on_embedded_redis(store):
        return f"prefix {storage.keys.prefix!r} on the embedded Redis of this process"
    if isinstance(storage.client, RedisCluster):
        nodes = masters(storage.client)
        return (f"prefix {storage.keys.prefix!r} ({storage.partitions} partitions) on a Redis "
                f"Cluster of {len(nodes)} masters: {', '.join(nodes)}")
    # storage.server: host:port/db, user@..., or the Sentinel master's name; no password
    return f"prefix {storage.keys.prefix!r} on Redis {storage.server}"


def check_metrics_port(port: int) -> None:
    """Exits 2 naming the port when another program holds it: the processes would retry
    binding it forever, and Prometheus scrape that program instead."""
    from .observability import metrics_port_error

    error = metrics_port_error(port)
    if error is not None:
        fail(error, EXIT_USAGE)


class StopSignals:
    """SIGTERM/SIGINT handling from the first moment of a long-running command.

    Without it a stop signal during start-up (importing the app) would kill the process
    with status -15 rather than stop it. The first signal sets `requested` and calls
    `on_stop`; a second one exits at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.on_stop: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}
        self._done = False

    def __enter__(self) -> StopSignals:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done = True  # a signal still pending repeats one already acted on
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._done:
            return
        if self.requested:
            raise SystemExit(EXIT_FAILED)  # asked twice: stop now
        self.requested = True
        log.info("%s received: stopping", signal.Signals(signum).name)
        if self.on_stop is not None:
            self.on_stop()

    def block(self) -> None:
        """Holds further signals pending (they survive exec) for the next program."""
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)


# -- Running -------------------------------------------------------------------------------

@app.command()
def publish(app_ref: AppRef) -> None:
    """Run the publisher: relay new events from the outbox to the subscribers' queues.

    Also hands new subscribers the history and re-sends notices that got lost. Several
    publishers may run at once. Stops cleanly on SIGTERM or SIGINT: it finishes the
    current round (entries are acknowledged only after they are sent, so nothing is lost).
    """
    from .observability import SharedMetricsServer

    with StopSignals() as stop:
        settings = settings_or_exit()
        store = load_app(app_ref, embedded=True)  # require_shared_redis says why not
        require_shared_redis(store, "publish")
        check_bus(store, settings)
        if settings.metrics_port is not None:
            check_metrics_port(settings.metrics_port)
            SharedMetricsServer(settings.metrics_port).start()
        stop.on_stop = store.close  # the running round finishes, then start() returns
        if stop.requested:
            return
        log.info("publishing %s (%s)", app_ref, describe(store))
        with reported_errors():
            store.start()


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Other options are passed to Dramatiq, e.g. --queues balances. Plain "
    "`dramatiq APP_MODULE` works too (set dramatiq_worker_timeout=20 as es-workers does).",
)
def worker(
    ctx: typer.Context,
    app_ref: AppRef,
    processes: Annotated[
        int | None, typer.Option("--processes", "-p", min=1, help="Worker processes "
                                 "[default: ES_WORKER_PROCESSES, 1]")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", min=1, help="Threads per process "
                                 "[default: ES_WORKER_THREADS, 8]")
    ] = None,
    worker_timeout: Annotated[
        int | None, typer.Option("--worker-timeout", min=1, help="Poll interval in ms of the "
                                 "queues on RabbitMQ; on Redis new and delayed messages "
                                 "wake the workers [default: ES_WORKER_TIMEOUT_MS, 20]")
    ] = None,
) -> None:
    """Run the Dramatiq workers of the app's subscribers (replaces this process).

    Each subscriber is an actor on its own queue; a worker reads an entity's events from
    the subscriber's checkpoint and runs the handler, in order per entity. SIGTERM or
    SIGINT: in-flight deliveries finish, prefetched ones go back to the queue.
    """
    from .observability import MADE_DIR_ENV, MULTIPROC_DIR_ENV
    from .workers.bus import DramatiqEventBus

    with StopSignals() as stop:
        settings = settings_or_exit()
        store = load_app(app_ref, embedded=True)  # require_shared_redis says why not
        require_shared_redis(store, "worker")
        check_bus(store, settings)
        if not isinstance(store.bus, DramatiqEventBus):
            fail(f"{app_ref} has a {type(store.bus).__name__}: workers need a DramatiqEventBus "
                 "(Store.from_settings builds one)", EXIT_USAGE)
        with reported_errors():  # before Dramatiq starts: one line, exit 2
            store.bus.claim_subscribers()
            check_queues(store, store.bus.broker.get_declared_queues(), ctx.args)
        if worker_timeout is not None:
            settings = settings.model_copy(update={"worker_timeout_ms": worker_timeout})
        module = app_ref.partition(":")[0]
        argv = [
            sys.executable, "-m", "es_workers.run_dramatiq", module, "--skip-logging",
            "--processes", str(processes or settings.worker_processes),
            "--threads", str(threads or settings.worker_threads),
            *ctx.args,
        ]
        # Dramatiq reads its poll timeout and prefetch from the environment when imported,
        # so the workers run in a fresh process.
        env = {**os.environ, **settings.worker_environment()}
        if settings.metrics_port is not None:
            check_metrics_port(settings.metrics_port)  # before any worker process starts
        if settings.metrics_port is not None and not env.get(MULTIPROC_DIR_ENV):
            # Every worker process writes its metrics there; one serves them all. Dramatiq's
            # main process (run_dramatiq) removes it when it exits.
            env[MULTIPROC_DIR_ENV] = env[MADE_DIR_ENV] = tempfile.mkdtemp(
                prefix="es-workers-metrics-")
        log.info("starting Dramatiq workers for %s (%s): %s", app_ref, describe(store),
                 " ".join(argv[1:]))
        sys.stdout.flush()
        sys.stderr.flush()
        # From here a stop signal waits, pending, until Dramatiq has its handlers in place.
        stop.block()
        if stop.requested:
            return
        os.execvpe(sys.executable, argv, env)


def check_queues(store: Store, declared: set[str], args: list[str]) -> None:
    """Refuses a queue of Dramatiq's `--queues`/`-Q` that no subscriber has (Dramatiq would
    consume it silently, and the subscriber meant would get no worker)."""
    from .names import closest

    known = sorted({subscriber_id for entity_type in store.entity_types()
                    for subscriber_id in store.subscriber_ids(entity_type)})
    for name in queues_named(args):
        if name in known or name in declared:
            continue
        near = closest(name, known)
        hint = f"did you mean {near!r}? " if near else ""
        raise UnknownNameError(
            f"--queues {name!r}: no subscriber of this app has that ID; {hint}(subscriber "
            f"IDs: {', '.join(map(repr, known)) or 'none'})")


def queues_named(args: list[str]) -> list[str]:
    """The queue names given to Dramatiq's `--queues`/`-Q` (it takes every argument up to
    the next option) among the worker's extra arguments."""
    names: list[str] = []
    taking = False
    for arg in args:
        if arg in ("--queues", "-Q"):
            taking = True
        elif arg.startswith("--queues="):
            names.append(arg.partition("=")[2])
            taking = False
        elif arg.startswith("-"):
            taking = False
        elif taking:
            names.append(arg)
    return names


# -- Inspecting ----------------------------------------------------------------------------

@app.command()
def status(
    app_ref: AppRef,
    as_json: AsJson = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 3 when a threshold is passed, naming it (for alerts and cron)"
    )] = False,
    max_lag: Annotated[int | None, typer.Option(
        "--max-lag", min=0, help="With --check: events a subscriber may be behind "
        "[default: not checked]")] = None,
    max_parked: Annotated[int, typer.Option(
        "--max-parked", min=0, help="With --check: parked entities a subscriber may have")] = 0,
    max_backlog: Annotated[int | None, typer.Option(
        "--max-backlog", min=0, help="With --check: outbox entries not yet relayed "
        "[default: not checked]")] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Refresh until interrupted (Ctrl-C); not with --check")] = False,
    interval: Annotated[float, typer.Option(
        "--interval", min=0.1, help="Seconds between refreshes with --watch")] = 2.0,
    embedded: Embedded = False,
) -> None:
    """Show the outbox backlog and, per subscriber, its lag and parked entities (with
    the error and the end of its traceback)."""
    from .health import Thresholds

    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    if watch and check:
        fail("--watch refreshes until interrupted; --check exits once: use one of them",
             EXIT_USAGE)
    if watch:
        try:
            while True:
                show_status(app_ref, store, as_json, clear=not as_json)
                time.sleep(interval)
        except KeyboardInterrupt:
            return  # how a watch ends
    report = show_status(app_ref, store, as_json)
    if check:
        exit_past_thresholds(report, Thresholds(max_lag=max_lag, max_parked=max_parked,
                                                max_backlog=max_backlog))


def show_status(app_ref: str, store: Store, as_json: bool, clear: bool = False) -> StoreStatus:
    from . import admin

    with reported_errors():
        report = admin.status(store)
    if clear:
        out.clear()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_status(app_ref, store, report)
    return report


def exit_past_thresholds(report: StoreStatus, limits: Thresholds) -> None:
    from .health import breaches

    found = breaches(report, limits)
    for line in found:
        err.print(f"check failed: {line}", style="red", markup=False, soft_wrap=True)
    if found:
        raise typer.Exit(EXIT_CHECK)


def print_status(app_ref: str, store: Store, report: StoreStatus) -> None:
    out.print(f"{app_ref}: {describe(store)}")
    out.print(f"outbox backlog: {report.outbox_backlog} (appended, not yet relayed)")
    for warning in report.warnings:
        out.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
    print_footprints(report)
    table = folding_table("entity type", "subscriber", "history", "lagging entities",
                          "events behind", "parked", "missed")
    parked_entities: list[ParkedEntity] = []
    for sub in report.subscribers:
        table.add_row(
            sub.entity_type, sub.subscriber_id,
            "caught up" if sub.caught_up else "[yellow]pending[/]",
            str(sub.lagging_entities), str(sub.events_behind),
            f"[red]{len(sub.parked)}[/]" if sub.parked else "0",
            f"[yellow]{sub.missed_events}[/]" if sub.missed_events else "0",
        )
        parked_entities.extend(sub.parked)
    if report.subscribers:
        out.print(table)
    else:
        out.print("no subscribers")
    print_rebuilds(app_ref, report)
    print_archive(report)
    if parked_entities:
        print_parked(parked_entities, traceback_lines=TRACEBACK_LINES_IN_STATUS)
        out.print("repair: es-workers parked retry|skip APP SUBSCRIBER ENTITY_TYPE ENTITY_ID; "
                  "whole tracebacks: es-workers parked list")


def print_archive(report: StoreStatus) -> None:
    """The archive's table: per entity type, events written, archived, and the lag (events
    past the hot window not archived yet, and how long ago the oldest of them was written)."""
    if not report.archive:
        return
    table = folding_table("entity type", "events", "marked archived", "archive lag",
                          "lag age", "in the archive", "archived bytes", title="archive")
    for row in report.archive:
        table.add_row(row.entity_type, str(row.events), str(row.archived_marked),
                      str(row.lag), "-" if row.lag_age_s is None else f"{row.lag_age_s:.1f} s",
                      "?" if row.archived_events is None else str(row.archived_events),
                      "?" if row.archived_bytes is None else str(row.archived_bytes))
    out.print(table)
    for error in sorted({row.error for row in report.archive if row.error}):
        out.print(f"warning: {error}", style="yellow", markup=False, soft_wrap=True)


def print_footprints(report: StoreStatus) -> None:
    """Per entity type: entities, events stored and memory (estimated from a sample), what
    a scavenge would free now, and the deletes and tombstones recorded."""
    if not report.footprints:
        return
    table = folding_table("entity type", "entities", "events stored", "memory",
                          "a scavenge would free", "deleted/tombstoned")
    for found in report.footprints:
        table.add_row(
            found.entity_type, str(found.entities), f"~{found.stored_events}",
            _bytes(found.memory_bytes),
            f"~{found.removable_events} events ({_bytes(found.removable_bytes)})",
            str(found.removals),
        )
    out.print(table)


def _bytes(size: int | None) -> str:
    """An estimated size in B, KB, MB or GB ("unknown": the server would not tell)."""
    if size is None:
        return "unknown"
    if size < 1024:
        return f"~{size} B"
    scaled, unit = size / 1024, "KB"
    for bigger in ("MB", "GB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, bigger
    return f"~{scaled:.1f} {unit}"


def print_rebuilds(app_ref: str, report: StoreStatus) -> None:
    """A line per subscriber a rebuild pauses, or left halfway."""
    shown = set()
    for sub in report.subscribers:
        if sub.subscriber_id in shown or not (sub.paused or sub.rebuild):
            continue
        shown.add(sub.subscriber_id)
        done = sub.rebuild
        by = f" by {done.by} since {done.started_at}, at: {done.stage}" if done else ""
        if sub.paused:
            out.print(f"paused: {sub.subscriber_id} is being rebuilt{by}", style="yellow",
                      markup=False, soft_wrap=True)
        else:
            out.print(f"rebuild interrupted: {sub.subscriber_id}{by}; its read model may be "
                      f"partly reset: run es-workers rebuild {app_ref} {sub.subscriber_id}",
                      style="red", markup=False, soft_wrap=True)


def folding_table(*columns: str, title: str | None = None) -> Table:
    """A table that wraps long values instead of cutting them short."""
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def print_parked(entities: list[ParkedEntity], traceback_lines: int | None = None) -> None:
    """One line per parked entity (long errors stay readable on a narrow terminal), then
    its handler's traceback, indented: the last `traceback_lines` lines, or all it kept."""
    for item in entities:
        out.print(
            f"parked: {item.subscriber_id} {item.entity_type} {item.entity_id!r} at event "
            f"{item.event_number}, {item.attempts} attempts, {item.parked_at}: {item.error}",
            markup=False, soft_wrap=True,
        )
        lines = item.traceback.rstrip("\n").splitlines()
        if traceback_lines is not None and len(lines) > traceback_lines:
            lines = ["...", *lines[-traceback_lines:]]
        for line in lines:
            out.print(f"    {line}", markup=False, soft_wrap=True, style="dim")


SHOW_CONTENT_CHARS = 2000
"""Characters of an event's content `show` prints in its table; --json prints it whole."""


@app.command()
def show(app_ref: AppRef, entity_type: EntityType, entity_id: EntityId,
         as_json: AsJson = False, embedded: Embedded = False,
         redact: Annotated[bool, typer.Option(
             "--redact", help="Show Personal fields as a placeholder")] = False) -> None:
    """Print an entity's events (upgraded, as subscribers see them, personal fields
    decrypted unless --redact). Long contents are cut to SHOW_CONTENT_CHARS characters,
    with a note.

    With --json, one JSON object per line, each printed as it is read: event_number,
    event_name, event_time, store_event_id, content (whole).
    """
    from . import admin
    from .personal import redacted

    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    with reported_errors():
        admin.check_entity_type(store, entity_type)
    shown = 0
    table = folding_table("#", "event", "time (UTC)", "store event ID", "content",
                          title=f"{entity_type} {entity_id}")
    with reported_errors(), store.open(entity_type, entity_id) as stream:
        for event in stream.all():
            shown += 1
            content = (json.dumps(redacted(event.content), ensure_ascii=False) if redact
                       else event.content.model_dump_json())
            if as_json:
                sys.stdout.write(json_line(event, content))
            else:
                table.add_row(str(event.event_number), event.content.event_name,
                              event.event_time.isoformat(timespec="milliseconds"),
                              event.store_event_id, cut(content))
    if not shown:
        fail(f"{entity_type} {entity_id!r} has no events")
    if not as_json:
        out.print(table)


@app.command("log")
def log_command(
    app_ref: AppRef,
    after: Annotated[str | None, typer.Option(
        "--after", metavar="P", help="Start after this position (p0:42), or one per "
        "partition, comma-separated (p0:42,p3:7); others from their start")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Then print events as they are committed, until Ctrl-C")] = False,
    entity_types: Annotated[list[str] | None, typer.Option(
        "--type", "-t", metavar="T", help="Only this entity type (repeatable)")] = None,
    as_json: AsJson = False,
    limit: Annotated[int | None, typer.Option(
        "--limit", "-n", min=0, help="Stop after this many events")] = None,
    embedded: Embedded = False,
) -> None:
    """Print the events in log order (commit order per partition; partitions merged by
    event time), upgraded. With --json, one JSON object per line as `show --json` prints
    it, plus position, entity_type and entity_id."""
    from . import admin
    from .position import parse_after

    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    try:
        start = parse_after(after) if after else None
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    with reported_errors():
        for entity_type in entity_types or ():
            admin.check_entity_type(store, entity_type)
    events: Iterator[Event]
    if follow:
        events = store.follow(start, entity_types=entity_types)
    else:
        events = store.read_all(start, entity_types=entity_types, limit=limit)
    shown = 0
    with reported_errors(), contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --follow
        for event in events if limit != 0 else ():
            if as_json:
                sys.stdout.write(log_json_line(event))
            else:
                out.print(f"{event.position} {event.entity_type} {event.entity_id} "
                          f"#{event.event_number} {event.content.event_name} "
                          f"{event.event_time.isoformat(timespec='milliseconds')} "
                          f"{cut(event.content.model_dump_json())}", markup=False,
                          highlight=False, soft_wrap=True)
            sys.stdout.flush()
            shown += 1
            if shown == limit:  # before waiting for one more (--follow)
                break


def log_json_line(event: Event) -> str:
    """The event as `log --json` prints it: `json_line`'s, with where it is."""
    where = json.dumps({"position": str(event.position), "entity_type": event.entity_type,
                        "entity_id": event.entity_id})
    return f"{where[:-1]}, {json_line(event)[1:]}"


def json_line(event: Event, content: str | None = None) -> str:
    """The event as `show --json` prints it (its content spliced in as pydantic wrote it:
    a ~1 MB event is not parsed back into Python objects), `content` if given."""
    head = json.dumps({
        "event_number": event.event_number,
        "event_name": event.content.event_name,
        "event_time": event.event_time.isoformat(),
        "store_event_id": event.store_event_id,
    })
    if content is None:
        content = event.content.model_dump_json()
    return f'{head[:-1]}, "content": {content}}}\n'


def cut(content: str) -> str:
    if len(content) <= SHOW_CONTENT_CHARS:
        return content
    rest = len(content) - SHOW_CONTENT_CHARS
    return f"{content[:SHOW_CONTENT_CHARS]}... ({rest:,} more characters: --json prints all)"


@app.command()
def config(
    as_json: AsJson = False,
    example: Annotated[
        bool, typer.Option("--example", help="Print an example config file of every setting")
    ] = False,
) -> None:
    """Print the settings in effect (environment ES_... over config/es.toml over defaults)."""
    from .settings import example_toml, unknown_variables

    if example:
        typer.echo(example_toml(), nl=False)
        return
    settings = settings_or_exit()
    values = settings.shown()
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    table = folding_table("setting", "environment variable", "value")
    for name, value in values.items():
        table.add_row(name, f"ES_{name.upper()}", "(unset)" if value is None else str(value))
    out.print(table)
    unknown = unknown_variables()
    if unknown:
        out.print("environment variables that are no setting (ignored):", style="yellow")
    for name, closest in unknown.items():
        hint = f" (did you mean {closest}?)" if closest else ""
        out.print(f"  {name}{hint}", markup=False)


@app.command()
def dashboard(
    app_ref: AppRef,
    host: Annotated[str, typer.Option(help="Address to listen on; other than loopback "
                                      "only with ES_DASHBOARD_TOKEN set")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on")] = 8642,
    read_only: Annotated[bool, typer.Option("--read-only", help="Hide Retry and Skip, and "
                                            "refuse them")] = False,
) -> None:
    """Serve the web dashboard: lag, parked entities (Retry, Skip), entity browser, JSON.

    With ES_DASHBOARD_TOKEN set, every page and endpoint asks for that token (a login
    form, or `Authorization: Bearer` for /api/...). Needs the `dashboard` extra.
    """
    from .dashboard.access import is_loopback

    token = os.environ.get("ES_DASHBOARD_TOKEN") or None
    if token is None and not is_loopback(host):
        fail(f"refusing to serve the dashboard on {host} without a token: anyone who "
             "reaches it could skip events. Set ES_DASHBOARD_TOKEN, or bind to 127.0.0.1.",
             EXIT_USAGE)
    settings_or_exit()
    try:
        import uvicorn

        from .dashboard.app import create_app
    except ImportError as error:
        fail(f"the dashboard needs its extra ({error}): pip install 'es_workers[dashboard]'",
             EXIT_USAGE)
    store = load_app(app_ref, embedded=True)  # require_shared_redis says why not
    require_shared_redis(store, "dashboard")
    listening = listen_or_exit(host, port)
    log.info("dashboard of %s (%s) on http://%s:%d/", app_ref, describe(store), host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(store, token=token, read_only=read_only),
                                           log_config=None, server_header=False))
    server.run(sockets=[listening])
    if not server.started:  # uvicorn logged why (the app's start-up failed)
        fail(f"the dashboard did not start on {host}:{port}")


def listen_or_exit(host: str, port: int) -> socket.socket:
    """The dashboard's listening socket, bound here: uvicorn exits 3 when it cannot bind,
    the code `status --check` gives for a threshold passed."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return socket.create_server((address, port), family=family)
    except OSError as error:
        fail(f"cannot listen on {host}:{port}: {error.strerror or error} (is another program "
             "on that port? choose another with --port)")


@app.command()
def health(
    app_ref: AppRef,
    role: Annotated[str | None, typer.Option(
        "--role", help="Only heartbeats of 'publisher' or 'worker' processes [default: any]"
    )] = None,
    any_host: Annotated[bool, typer.Option(
        "--any-host", help="Heartbeats of any host, not only this one (this container)"
    )] = False,
    max_age: Annotated[float | None, typer.Option(
        "--max-age", min=1, help="Seconds after which a heartbeat is stale [default: six "
        "heartbeat intervals, 30]")
    ] = None,
    embedded: Embedded = False,
) -> None:
    """Exit 0 when Redis and the broker answer and a publisher or worker process of this
    host beat recently; else exit 1 naming what failed. For container healthchecks."""
    from .health import DEFAULT_MAX_AGE_S, check_health

    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    if role not in (None, "publisher", "worker"):
        fail(f"--role must be 'publisher' or 'worker', not {role!r}", EXIT_USAGE)
    checks = check_health(store, role=role, host="*" if any_host else None,
                          max_age_s=DEFAULT_MAX_AGE_S if max_age is None else max_age)
    for item in checks:
        out.print(f"{item.name}: {'ok' if item.ok else 'FAILED'}: {item.detail}", markup=False,
                  soft_wrap=True)
    if not all(item.ok for item in checks):
        raise typer.Exit(EXIT_FAILED)


# -- Repairing -----------------------------------------------------------------------------

@app.command()
def replay(
    app_ref: AppRef,
    subscriber_id: SubscriberId,
    entity_type: Annotated[
        str | None, typer.Option("--entity-type", "-e", help="Only this entity type "
                                 "[default: every type the subscriber has]")
    ] = None,
    yes: Yes = False,
    embedded: Embedded = False,
) -> None:
    """Deliver a subscriber's whole history again: forget its checkpoints and parked
    entities, then send it every entity. It neither pauses the subscriber nor clears its
    read model: to rebuild a read model, use `rebuild`. Asks first."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import admin

    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    with reported_errors():
        admin.check_subscriber(store, subscriber_id, entity_type)
        types = [entity_type] if entity_type else [
            t for t in store.entity_types() if subscriber_id in store.subscriber_ids(t)
        ]
        total = sum(admin.count_entities(store, t) for t in types)
    confirm_or_exit(f"Forget the checkpoints and parked entities of {subscriber_id!r} on "
                    f"{', '.join(types)} and send it {total} entities again?", yes)
    with reported_errors(), Progress(
        TextColumn("replay {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err,
    ) as progress:
        task = progress.add_task(subscriber_id, total=total)
        sent = admin.replay(
            store, subscriber_id, entity_type,
            progress=lambda done: progress.update(task, completed=done),
        )
    out.print(f"{subscriber_id}: {sent} entities sent again; the workers deliver their events")


@app.command()
def rebuild(
    app_ref: AppRef,
    subscriber_id: SubscriberId,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0, help="Seconds to wait for the subscriber's running handlers")
    ] = 60.0,
    yes: Yes = False,
    embedded: Embedded = False,
) -> None:
    """Rebuild a subscriber's read model while the app runs: pause it, wait for its running
    handlers, forget its checkpoints and parked entities, call its reset hook, deliver its
    whole history, resume. Events written meanwhile follow the history. Asks first."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import admin

    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    with reported_errors():
        admin.check_subscriber(store, subscriber_id)
        types = [t for t in store.entity_types() if subscriber_id in store.subscriber_ids(t)]
        total = sum(admin.count_entities(store, t) for t in types)
    confirm_or_exit(f"Pause {subscriber_id!r}, clear its read model (its reset hook), forget "
                    f"its checkpoints and parked entities on {', '.join(types)} and deliver "
                    f"its {total} entities again?", yes)
    with reported_errors(), Progress(
        TextColumn("rebuild {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err,
    ) as progress:
        task = progress.add_task(subscriber_id, total=total)
        sent = admin.rebuild(store, subscriber_id, timeout=timeout,
                             progress=lambda done: progress.update(task, completed=done))
    out.print(f"{subscriber_id}: rebuilt from {sent} entities; the workers deliver their "
              "history, then the events written meanwhile")


@app.command()
def scavenge(app_ref: AppRef, yes: Yes = False, embedded: Embedded = False) -> None:
    """Remove the events that truncations (store.truncate_before) and the app's retention
    limits allow, in bounded steps, never one a subscriber has not handled. Removed events
    cannot be read again; asks first."""
    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    limits = ", ".join(f"{t} {r}" for t, r in store.retention.items()) or "none"
    confirm_or_exit(f"Remove the events that truncations and the retention limits ({limits}) "
                    "allow? They can never be read again.", yes)
    with reported_errors():
        done = store.scavenge()
    out.print(f"scavenged {done.events} events ({done.bytes} bytes) of {done.entities} "
              "entities")


@app.command()
def archive(
    app_ref: AppRef,
    init: Annotated[bool, typer.Option(
        "--init", help="Create or migrate the archive's table in PostgreSQL, then exit")] = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Compare the archive with Redis (counts, and checksums of the events "
        "both hold), then exit; exit 1 if they differ")] = False,
    once: Annotated[bool, typer.Option(
        "--once", help="One pass over the partitions this process can lease, then exit")] = False,
    lease_ms: Annotated[int, typer.Option(
        "--lease-ms", min=100, help="How long a partition stays this archiver's without "
        "renewal (another one takes it over after a crash)")] = 15_000,
    scavenge: Annotated[bool, typer.Option(
        "--scavenge/--no-scavenge", help="Scavenge after the first pass and each pass "
        "that archived events, so they leave Redis without a publisher's "
        "ES_SCAVENGE_INTERVAL_MS (never what a subscriber has not handled)")] = True,
    eventsourcing: Annotated[bool, typer.Option(
        "--eventsourcing/--no-eventsourcing", help="Also archive the stored events of the "
        "eventsourcing applications under the prefix (es_workers.eventsourcing), keeping "
        "each aggregate's newest ES_ARCHIVE_AFTER (at least 1) in Redis")] = True,
) -> None:
    """Run the archiver: copy events older than the hot window (ES_ARCHIVE_AFTER, or the
    app's `archive={...}`) to PostgreSQL (ES_ARCHIVE_URL), then mark them archived so the
    scavenger may remove them from Redis; reads go through the archive. The same for the
    eventsourcing applications under the prefix (removed from Redis at once). Creates or
    migrates the archive's tables first. Several archivers may run; stops cleanly on
    SIGTERM."""
    import threading

    from .redis.storage import RedisStorage
    from .settings import env_name

    with StopSignals() as stop:
        settings = settings_or_exit()
        lower_priority(settings.archive_nice)
        store = load_app(app_ref, embedded=True)
        require_shared_redis(store, "archive")
        storage = store.storage
        if not isinstance(storage, RedisStorage) or storage.archive is None:
            fail(f"no archive: set {env_name('archive_url')}=postgresql://...", EXIT_USAGE)
        from .postgres.schema import VERSION as SCHEMA_VERSION  # psycopg: the archive extra

        with reported_errors():
            had = storage.archive.init()
            if init or had != SCHEMA_VERSION:
                out.print(f"archive table {storage.archive.table}: version {had} -> "
                          f"{SCHEMA_VERSION}")
            also: list[RecorderArchiver] = []
            recorders = (recorder_archiver(storage, settings, lease_ms, init) if eventsourcing
                         else None)
            if recorders is not None:
                also.append(recorders)
            if init:
                return
            if verify:
                verify_archive(store, storage)
                return
            archiver = storage.archiver(store.hot_windows, storage.hot_window,
                                        batch=settings.archive_batch, lease_ms=lease_ms,
                                        also=also)
            if once:
                done = archiver.run_once()
                archiver.release()
                out.print(f"archived {done.events} events of {done.entities} entities")
                return
            if settings.metrics_port is not None:  # es_archived_total
                from .observability import SharedMetricsServer

                check_metrics_port(settings.metrics_port)
                SharedMetricsServer(settings.metrics_port).start()
            threads_stop = threading.Event()
            stop.on_stop = threads_stop.set
            if stop.requested:
                return
            log.info("archiving %s to %s", app_ref, storage.archive.server)
            archiver.run(threads_stop, after_pass=(lambda _: store.scavenge()) if scavenge
                         else None)


def recorder_archiver(storage: RedisStorage, settings: Settings, lease_ms: int,
                      init: bool) -> RecorderArchiver | None:
    """The archiver of the eventsourcing applications under the storage's prefix, its table
    created or migrated."""
    from .postgres.schema import RECORDED
    from .redis.recorder_archiver import RecorderArchiver
    from .wiring import recorded_archive

    # Beside the app's archive (ES_ARCHIVE_URL, or built in code): the same PostgreSQL and
    # prefix, as `status` counts it.
    archive = recorded_archive(storage.archive)
    if archive is None:
        log.info("the archive %s is not PostgresArchive: eventsourcing applications are not "
                 "archived", type(storage.archive).__name__)
        return None
    had = archive.init()
    if init or had != RECORDED.version:
        out.print(f"archive table {archive.table}: version {had} -> {RECORDED.version}")
    return RecorderArchiver(storage.client, storage.keys.prefix, archive,
                            keep=settings.archive_after, batch=settings.archive_batch,
                            lease_ms=lease_ms)


AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(nice: int) -> None:
    """Takes niceness `nice` (keeping a higher one it was started with), so that the app's
    processes on the same cores get the CPU first: archiving only lags, and its lag is
    watched. On Linux with autogroups (`kernel.sched_autogroup_enabled`) the CPU is shared
    between sessions first and a process' niceness weighs only within its own session, so a
    process that leads its session (honcho and `setsid` start each process in one) gives
    the niceness to the session's autogroup too; one in another's session (a shell's)
    leaves that as it is."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    group = "left as it is: this process does not lead its session"
    if os.getsid(0) == os.getpid():
        try:
            group = _nicer_autogroup(nice)
        except (OSError, ValueError) as error:  # no autogroups: not Linux, or not built in
            group = f"none ({error})"
    log.info("archiving at niceness %d; autogroup %s", os.getpriority(os.PRIO_PROCESS, 0),
             group)


def _nicer_autogroup(nice: int) -> str:
    """Raises this process' autogroup's niceness to `nice`; returns it as the kernel shows
    it (`/autogroup-12 nice 10`)."""
    _, _, current = AUTOGROUP.read_text().partition(" nice ")
    for _ in range(3):
        if int(current) >= nice:
            break
        try:
            AUTOGROUP.write_text(str(nice))
            break
        except BlockingIOError:  # EAGAIN: the kernel takes one such change per 0.1 s
            time.sleep(0.15)
    return AUTOGROUP.read_text().strip()


def verify_archive(store: Store, storage: RedisStorage) -> None:
    table = folding_table("entity type", "entities", "marked archived", "in the archive",
                          "compared with Redis", "result")
    problems: list[str] = []
    for entity_type in store.entity_types():
        check = storage.verify_archive(entity_type)
        table.add_row(entity_type, str(check.entities), str(check.archived), str(check.found),
                      str(check.compared), "ok" if check.ok else "[red]differs[/]")
        problems += check.problems
    out.print(table)
    for problem in problems[:50]:
        out.print(problem, style="red", markup=False, soft_wrap=True)
    if problems:
        fail(f"the archive and Redis differ ({len(problems)} problems)")


@parked_app.command("list")
def parked_list(app_ref: AppRef, subscriber_id: SubscriberId, entity_type: EntityType,
                as_json: AsJson = False, embedded: Embedded = False) -> None:
    """List the entities parked for a subscriber."""
    from . import admin

    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    with reported_errors():
        entities = admin.parked(store, subscriber_id, entity_type)
    if as_json:
        typer.echo(json.dumps([vars(item) for item in entities], indent=2))
    elif entities:
        print_parked(entities)
    else:
        out.print(f"nothing parked for {subscriber_id} on {entity_type}")


@parked_app.command("retry")
def parked_retry(app_ref: AppRef, subscriber_id: SubscriberId, entity_type: EntityType,
                 entity_id: EntityId, embedded: Embedded = False) -> None:
    """Unpark the entity and deliver again from the event that failed (after a fix)."""
    from . import admin

    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    with reported_errors():
        item = admin.retry_parked(store, subscriber_id, entity_type, entity_id)
    out.print(f"{subscriber_id}: {entity_type} {entity_id!r} unparked; delivering again from "
              f"event {item.event_number} (it failed {item.attempts} times: {item.error})",
              markup=False)


@parked_app.command("skip")
def parked_skip(app_ref: AppRef, subscriber_id: SubscriberId, entity_type: EntityType,
                entity_id: EntityId, yes: Yes = False, embedded: Embedded = False) -> None:
    """Mark the failing event handled without handling it, then deliver the rest. Asks
    first: the subscriber never handles that event."""
    from . import admin

    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    with reported_errors():
        admin.check_subscriber(store, subscriber_id, entity_type)
    confirm_or_exit(f"Skip the failing event of {entity_type} {entity_id!r} for "
                    f"{subscriber_id!r}? It will never be handled by it.", yes)
    with reported_errors():
        item = admin.skip_parked(store, subscriber_id, entity_type, entity_id)
    out.print(f"{subscriber_id}: {entity_type} {entity_id!r} skipped event "
              f"{item.event_number} ({item.error}); delivering the rest", markup=False)


# -- Demo ----------------------------------------------------------------------------------

@app.command()
def demo(
    accounts: Annotated[int, typer.Option(min=2, max=100, help="Accounts to open")] = 5,
    operations: Annotated[
        int, typer.Option(min=0, max=100_000, help="Deposits, withdrawals and transfers")
    ] = 200,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the subscribers")
    ] = 60.0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the publisher's and worker's logs")
    ] = False,
) -> None:
    """Run the bank example end to end: a publisher and a worker process, events written,
    read models filled in, then everything stopped.

    Without ES_REDIS_URL it runs on an embedded Redis (fakeredis) served to the child
    processes; with it, on that Redis under a prefix of its own, deleted afterwards.
    """
    from .demo import run_demo

    settings = settings_or_exit()
    with reported_errors():
        code = run_demo(
            console=out, redis_url=settings.redis_url, accounts=accounts,
            operations=operations, timeout=timeout, verbose=verbose,
        )
    raise typer.Exit(code)


# -- Personal data -------------------------------------------------------------------------

keys_app = typer.Typer(
    help="Master keys of Personal fields: make one, re-wrap data keys with the current one.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new() -> None:
    """Print a fresh master key (its only output line): set it as ES_ENCRYPTION_KEY, and
    keep the old one in ES_ENCRYPTION_KEYS until `keys rotate` has run."""
    from .encryption import new_master_key

    typer.echo(new_master_key())


@keys_app.command("rotate")
def keys_rotate(app_ref: AppRef, embedded: Embedded = False) -> None:
    """Re-wrap every data key with ES_ENCRYPTION_KEY (unwrapping with ES_ENCRYPTION_KEYS);
    events are not touched. Afterwards the older keys can be dropped."""
    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    with reported_errors():
        done = store.rotate_keys()
    out.print(f"{done} data keys re-wrapped with the current master key")


@app.command()
def forget(app_ref: AppRef, subject: Annotated[str, typer.Argument(
               metavar="SUBJECT", help="The person: an entity ID, or the value of the "
               "field named by personal_subject")],
           yes: Yes = False, embedded: Embedded = False) -> None:
    """Forget a person: destroy the data key of SUBJECT, so its Personal fields read as
    placeholders everywhere, and notify subscribers (entity es.forgotten). Cannot be
    undone; asks first. Running it again is harmless."""
    settings_or_exit()
    store = load_app(app_ref, embedded=embedded)
    confirm_or_exit(f"Destroy the data key of {subject!r}? Its personal data can never be "
                    "read again.", yes)
    with reported_errors():
        destroyed = store.forget(subject)
    out.print(f"{subject!r} forgotten ({destroyed} data keys destroyed so far)", markup=False)


@app.command("migrate-keys")
def migrate_keys(
    prefix: Annotated[str | None, typer.Option(
        help="The prefix to rename (default: ES_PREFIX, else 'es')")] = None,
    yes: Yes = False,
) -> None:
    """Rename the keys of a prefix written by an earlier es_workers (hash tags {pN}) to
    this version's tags, which name the prefix and spread the partitions evenly over a
    cluster's masters. Stop the prefix's publishers and workers first; asks first.
    Running it again is harmless."""
    from .redis.migration import migrate_keys as migrate
    from .redis.migration import needs_migration
    from .wiring import redis_client

    settings = settings_or_exit()
    if settings.redis_url is None and settings.redis_sentinels is None:
        refuse_embedded()
    name = prefix or settings.prefix
    with reported_errors():
        client = redis_client(settings)
        if not needs_migration(client, name):
            migrate(client, name)  # refuses a prefix that does not exist
            out.print(f"prefix {name!r} has this version's keys already: nothing to do",
                      markup=False)
            return
    confirm_or_exit(f"Rename every key of prefix {name!r} to the new hash tags? Its "
                    "publishers and workers must be stopped.", yes)
    with reported_errors():
        done = migrate(client, name)
    out.print(f"prefix {name!r}: {done.keys} keys renamed", markup=False)


def main() -> None:
    app()

