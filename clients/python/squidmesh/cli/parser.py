"""The arguments of the client commands of `squidmesh` (workflows, runs, events, schedules,
workers), checked by argparse.

Building the parser imports the standard library only: a command's module, and with it grpc,
protobuf and rich, is imported when that command runs. So `squidmesh --help`, `serve` and
`worker` pay nothing for the client, and client commands nothing for the server or workers."""

from __future__ import annotations

import argparse
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from squidmesh import DEFAULT_ADDRESS

OUTPUTS = ("text", "json")
MAX_PAGE_SIZE = 1000  # the API's limit (ListRuns, ListWorkflows)
MAX_PREVIEW = 100  # PreviewSchedule's limit
# The policy names of squidmesh.schedule_requests (MissedTicksName, OverlapName), written
# here so that building the parser imports no protobuf code.
MISSED_TICKS = ("skip", "run_latest", "run_all")
OVERLAPS = ("skip", "buffer_one", "allow_all", "cancel_other")


@dataclass(frozen=True)
class ClientCommand:
    """A parser's handler: runs `function` of `module` with a client and an output."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int:
        from squidmesh.cli.command import run

        return run(getattr(importlib.import_module(self.module), self.function), args)


def server_address(args: argparse.Namespace) -> str:
    """Where a command finds the server: --server, else $SQUIDMESH_ADDRESS, else the default."""
    address: str = args.server or os.environ.get("SQUIDMESH_ADDRESS") or DEFAULT_ADDRESS
    return address


def add_client_commands(commands: Any) -> None:
    """Adds `workflows ...`, `runs ...`, `events ...`, `schedules ...` and `workers ...` to the
    subparsers `commands`."""
    workflows = _group(commands, "workflows", "workflow definitions")
    p = _command(
        workflows, "list", "workflows", "list_workflows", "list workflows (latest versions)"
    )
    _paging(p, default_size=100)
    p = _command(workflows, "get", "workflows", "get", "show a workflow")
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0, help="a version (default: the latest)")
    p = _command(
        workflows, "register", "workflows", "register", "register a workflow from a YAML/JSON file"
    )
    p.add_argument("file", type=Path, help="a WorkflowDefinition in protobuf JSON form")

    runs = _group(commands, "runs", "runs")
    p = _command(runs, "start", "runs", "start", "start a run")
    p.add_argument("workflow")
    p.add_argument("--payload", default="{}", help="a JSON object (default {})")
    p.add_argument("--trigger", default="", help="default: the workflow's first trigger")
    p.add_argument("--idempotency-key", default="", help="the same key returns the same run")
    p.add_argument("--watch", action="store_true", help="print its events until the run ends")
    p = _command(runs, "get", "runs", "get", "show a run, its steps and attempts")
    p.add_argument("run_id")
    p = _command(runs, "list", "runs", "list_runs", "list runs, newest first")
    p.add_argument("--workflow", default="")
    p.add_argument(
        "--status",
        action="append",
        default=[],
        type=_run_status,
        help="only runs in this status (repeatable): pending, running, completed, failed...",
    )
    p.add_argument("--trigger", default="")
    p.add_argument(
        "--created-after",
        type=_time,
        metavar="TIME",
        help="only runs created at or after TIME (ISO 8601, e.g. 2026-11-21T19:06:49Z; "
        "without a time zone: local time)",
    )
    p.add_argument("--created-before", type=_time, metavar="TIME", help="only runs created before")
    p.add_argument("--parent", default="", metavar="RUN_ID", help="only the child runs of RUN_ID")
    p.add_argument(
        "--schedule",
        default="",
        metavar="SCHEDULE_ID",
        help="only the runs SCHEDULE_ID started (ticks, triggers, backfills, their replays)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="include payloads, contexts and error details (RUN_VIEW_FULL; see --output json)",
    )
    _paging(p, default_size=20)
    p = _command(runs, "watch", "runs", "watch", "print a run's events until it ends")
    p.add_argument("run_id")
    p.add_argument(
        "--after",
        type=_sequence,
        default=0,
        metavar="N",
        help="only the events after sequence number N (default 0: from the start)",
    )
    p = _command(runs, "cancel", "runs", "cancel", "cancel a run")
    p.add_argument("run_id")
    p.add_argument("--reason", default="")
    _actor(p)
    p.add_argument("--idempotency-key", default="", help="repeating it is a no-op")
    p = _command(runs, "replay", "runs", "replay", "start a new run from a run's payload")
    p.add_argument("run_id")
    p.add_argument("--allow-irreversible", action="store_true")
    p.add_argument("--idempotency-key", default="", help="the same key returns the same replay")
    _decision_commands(runs)
    p = _command(runs, "explain", "diagnosis", "explain", "say why a run is where it is")
    p.add_argument("run_id")
    p = _command(
        runs, "history", "diagnosis", "history", "show a run's audit trail: commands and events"
    )
    p.add_argument("run_id")
    pages = p.add_mutually_exclusive_group()
    pages.add_argument("--all", action="store_true", help="every page, not only the first")
    pages.add_argument(
        "--page-size",
        type=_page_size,
        default=100,
        metavar="N",
        help=f"at most N entries per page, 1 to {MAX_PAGE_SIZE} (default 100)",
    )
    p.add_argument("--page-token", default="", help="the token a previous page printed")

    events = _group(commands, "events", "events for wait_event steps")
    p = _command(
        events, "publish", "events", "publish", "publish an event to the runs waiting for it"
    )
    p.add_argument("name", help='the event name, e.g. "payment.settled"')
    p.add_argument(
        "--key",
        required=True,
        dest="correlation_key",
        metavar="CORRELATION_KEY",
        help='its correlation key, e.g. "order:42"',
    )
    p.add_argument("--payload", default=None, help="a JSON object: the waiting steps' output")
    p.add_argument(
        "--id",
        default="",
        dest="event_id",
        help="the event's id: publishing an id again changes nothing (default: a new one)",
    )
    _actor(p)

    _schedule_commands(commands)

    workers = _group(commands, "workers", "worker processes")
    p = _command(workers, "list", "workers", "list_workers", "list live and recently gone workers")
    p.add_argument("--queue", default="", help="only workers consuming this queue")
    p.add_argument(
        "--gone-within",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="also list workers gone within DURATION, e.g. 90s, 15m, 1h30m, 2d (default 1h)",
    )


def _schedule_commands(commands: Any) -> None:
    """`schedules list|get|create|delete|pause|resume|trigger|backfill|preview`."""
    schedules = _group(commands, "schedules", "cron schedules")
    p = _command(schedules, "list", "schedules", "list_schedules", "list schedules by id")
    p.add_argument("--workflow", default="", help="only the schedules of this workflow")
    p.add_argument(
        "--state",
        action="append",
        default=[],
        type=_schedule_state,
        help="only schedules in this state (repeatable): active, paused, stopped",
    )
    _paging(p, default_size=50)
    p = _command(schedules, "get", "schedules", "get", "show a schedule, its next and recent ticks")
    p.add_argument("schedule_id")
    p = _command(schedules, "create", "schedules", "create", "create a schedule")
    p.add_argument("schedule_id", help='letters, digits and "-_.:", e.g. "reports-daily"')
    p.add_argument("--workflow", required=True, help="the workflow each tick starts")
    p.add_argument("--trigger", default="", help="default: the workflow's first trigger")
    p.add_argument("--payload", default="{}", help="a JSON object, the payload of every run")
    _spec_options(p, required=True)
    p.add_argument(
        "--missed-ticks",
        choices=MISSED_TICKS,
        help="what ticks missed while no server ran do (default skip)",
    )
    p.add_argument(
        "--max-catchup-runs",
        type=_sequence,
        default=0,
        metavar="N",
        help="with --missed-ticks run_all: at most N runs (default 10)",
    )
    p.add_argument(
        "--catchup-window",
        type=_duration,
        metavar="DURATION",
        help="missed ticks older than this are dropped (default 1h)",
    )
    p.add_argument(
        "--overlap",
        choices=OVERLAPS,
        help="what a tick does while the previous run is active (default skip)",
    )
    p.add_argument("--paused", action="store_true", help="create it paused")
    _actor(p)
    p = _command(schedules, "delete", "schedules", "delete", "delete a schedule created by create")
    p.add_argument("schedule_id")
    p.add_argument("--etag", default="", help="delete only if this is its current etag")
    for name, help in (
        ("pause", "pause a schedule: no tick until resumed"),
        ("resume", "resume a schedule from its next tick (ticks due meanwhile are not made up)"),
    ):
        p = _command(schedules, name, "schedules", name, help)
        p.add_argument("schedule_id")
        p.add_argument("--note", default="", help="why (shown on the schedule while paused)")
        _actor(p)
    p = _command(schedules, "trigger", "schedules", "trigger", "start a run of a schedule now")
    p.add_argument("schedule_id")
    _actor(p)
    _key(p, "the same key returns the same run")
    p.add_argument("--watch", action="store_true", help="print its events until the run ends")
    p = _command(
        schedules,
        "backfill",
        "schedules",
        "backfill",
        "start the runs of a past range's ticks (ticks decided before are left as they are)",
    )
    p.add_argument("schedule_id")
    for option, what in (("--start", "first"), ("--end", "last")):
        p.add_argument(
            option,
            type=_time,
            required=True,
            metavar="TIME",
            help=f"the {what} instant of the range, inclusive (ISO 8601, e.g. "
            "2026-11-21T19:00:00Z; without a time zone: local time)",
        )
    _actor(p)
    p = _command(
        schedules,
        "preview",
        "schedules",
        "preview",
        "print the next fire times of a schedule, or of --cron EXPR",
    )
    p.add_argument("schedule_id", nargs="?", default="", help="a schedule (or give --cron)")
    _spec_options(p, required=False)
    p.add_argument(
        "--count",
        type=_preview_count,
        default=5,
        metavar="N",
        help=f"how many fire times, 1 to {MAX_PREVIEW} (default 5)",
    )
    p.add_argument("--after", type=_time, metavar="TIME", help="ticks after TIME (default now)")


def _spec_options(p: argparse.ArgumentParser, required: bool) -> None:
    """When a schedule ticks: --cron, --tz, --jitter (a create's, or a preview's spec)."""
    p.add_argument(
        "--cron",
        required=required,
        metavar="EXPR",
        help='5 fields ("0 3 * * *"), 6 with seconds first, or "@hourly", "@daily"...',
    )
    p.add_argument("--tz", default="", metavar="ZONE", help="IANA time zone (default UTC)")
    p.add_argument(
        "--jitter",
        type=_duration,
        metavar="DURATION",
        help="each tick fires up to DURATION late, e.g. 30s, 5m (default none)",
    )


def _actor(p: argparse.ArgumentParser) -> None:
    """--actor: who runs the command (recorded), by default the user logged in."""
    p.add_argument(
        "--actor",
        default=os.environ.get("USER", "cli"),
        help="who does it, recorded with the command (default $USER)",
    )


def _key(p: argparse.ArgumentParser, help: str) -> None:
    """--key (or --idempotency-key): what makes a repeat of the command harmless."""
    p.add_argument(
        "--key", "--idempotency-key", dest="idempotency_key", metavar="KEY", default="", help=help
    )


def _decision_commands(runs: Any) -> None:
    """`runs resume`, `runs approve` and `runs reject`: a person's decision on a stopped run."""
    for name, function, help in (
        ("resume", "resume", "resume a run stopped at a pause step"),
        ("approve", "approve", "approve a waiting approval step (one vote)"),
        ("reject", "reject", "reject a waiting approval step"),
    ):
        p = _command(runs, name, "decisions", function, help)
        p.add_argument("run_id")
        p.add_argument("--step", default="", help="the step (default: the run's only one waiting)")
        p.add_argument("--actor", required=True, help="who decides (recorded in the history)")
        p.add_argument("--comment", default="", help="why")
        if name != "resume":
            p.add_argument(
                "--payload", default=None, help="a JSON object, checked against the step's fields"
            )
        _key(p, "repeating the command with the same key changes nothing")


def _group(commands: Any, name: str, help: str) -> Any:
    """A group of client commands (`runs`, `schedules`...): the subparsers of its commands."""
    return commands.add_parser(name, help=help).add_subparsers(title="commands", metavar="COMMAND")


def _command(
    group: Any, name: str, module: str, function: str, help: str
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = group.add_parser(name, help=help, description=help)
    p.add_argument(
        "--server", help=f"server address (default $SQUIDMESH_ADDRESS or {DEFAULT_ADDRESS})"
    )
    p.add_argument("-o", "--output", choices=OUTPUTS, default="text", help="text (default) or json")
    p.add_argument(
        "--json", dest="output", action="store_const", const="json", help="same as --output json"
    )
    p.set_defaults(handler=ClientCommand(f"squidmesh.cli.{module}", function))
    return p


def _paging(p: argparse.ArgumentParser, default_size: int) -> None:
    p.add_argument(
        "--page-size",
        type=_page_size,
        default=default_size,
        metavar="N",
        help=f"at most N per page, 1 to {MAX_PAGE_SIZE} (default {default_size})",
    )
    p.add_argument("--page-token", default="", help="the token a previous page printed")


def _enum_option(reader: str) -> Callable[[str], int]:
    """The type of an option naming a value of one of the contract's enums, read by
    `squidmesh.client.<reader>` when the option is used (protobuf code is not imported at
    start); its error lists the valid names."""

    def name(text: str) -> int:
        import squidmesh.client

        try:
            number: int = getattr(squidmesh.client, reader)(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return number

    return name


_run_status = _enum_option("run_status")
_schedule_state = _enum_option("schedule_state")


def _time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-21, 2026-11-21T19:06:49Z, "
            "2026-11-21 19:06:49+02:00)"
        ) from None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """ "90s", "15m", "1h30m", "2d", "500ms" or a number of seconds, in seconds."""
    spaced = text.strip().lower()
    try:
        seconds = float(spaced)
    except ValueError:
        parts = _DURATION_PART.findall(spaced)
        if not parts or "".join(n + u for n, u in parts) != spaced:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (e.g. 90s, 15m, 1h30m, 2d, or seconds)"
            ) from None
        seconds = sum(float(number) * _UNIT_S[unit] for number, unit in parts)
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return seconds


def _one_to(limit: int) -> Callable[[str], int]:
    """The type of an option taking a whole number from 1 to `limit`."""

    def whole_number(text: str) -> int:
        number = _integer(text)
        if not 1 <= number <= limit:
            raise argparse.ArgumentTypeError(f"must be from 1 to {limit}, got {number}")
        return number

    return whole_number


_page_size = _one_to(MAX_PAGE_SIZE)
_preview_count = _one_to(MAX_PREVIEW)


def _sequence(text: str) -> int:
    number = _integer(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
