"""`squidmesh schedules ...`: list, get, create, delete, pause, resume, trigger, backfill and
preview schedules. Times are shown in each schedule's time zone (and in UTC where an instant
must be exact)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from squidmesh.cli import schedule_text
from squidmesh.cli.command import InputError, json_object
from squidmesh.cli.output import Output
from squidmesh.cli.runs import _watch
from squidmesh.client import Client, schedule_spec
from squidmesh.v1 import schedule_pb2, schedule_service_pb2

T = TypeVar("T")


def list_schedules(args: argparse.Namespace, client: Client, out: Output) -> int:
    response = client.list_schedules(args.workflow, args.state, args.page_size, args.page_token)
    if out.json:
        out.message(response)
        return 0
    out.table(schedule_text.schedules_table(response.schedules, _now()))
    if response.next_page_token:
        out.note(f"more schedules: --page-token {response.next_page_token}")
    return 0


def get(args: argparse.Namespace, client: Client, out: Output) -> int:
    schedule = client.get_schedule(args.schedule_id)
    if out.json:
        out.message(schedule)
        return 0
    now = _now()
    for line, style in schedule_text.schedule_lines(schedule, now):
        out.line(line, style)
    out.line()
    out.line("next ticks", "bold")
    if schedule.next_ticks:
        out.table(schedule_text.next_ticks_table(schedule.next_ticks, schedule.spec.time_zone, now))
    else:
        out.line(f"  none: {_why_no_next_tick(schedule)}")
    if schedule.HasField("buffered_tick"):
        nominal = schedule.buffered_tick.nominal_time
        where = schedule_text.zone(schedule.spec.time_zone)[1]
        out.line()
        out.line(
            f"buffered tick {schedule_text.zoned(nominal, where)}: starts when the active run "
            "ends (overlap buffer_one)",
            "yellow",
        )
    out.line()
    out.line("recent ticks", "bold")
    if schedule.recent_ticks:
        out.table(schedule_text.ticks_table(schedule.recent_ticks, schedule.spec.time_zone))
    else:
        out.line("  none decided yet")
    return 0


def _why_no_next_tick(schedule: schedule_pb2.Schedule) -> str:
    if schedule.state == schedule_pb2.SCHEDULE_STATE_PAUSED:
        return "it is paused (squidmesh schedules resume)"
    if schedule.state == schedule_pb2.SCHEDULE_STATE_STOPPED:
        return "it is stopped: the latest version of its workflow no longer declares its trigger"
    return "its spec has no tick to come (past its end time)"


def create(args: argparse.Namespace, client: Client, out: Output) -> int:
    payload = json_object(args.payload, "--payload")
    if args.max_catchup_runs and args.missed_ticks != "run_all":
        raise InputError("--max-catchup-runs goes with --missed-ticks run_all")
    schedule = _checked(
        lambda: client.create_schedule(
            args.schedule_id,
            args.workflow,
            schedule_spec(args.cron, time_zone=args.tz, jitter=args.jitter),
            payload,
            trigger=args.trigger,
            catchup_window=args.catchup_window,
            missed_ticks=args.missed_ticks,
            max_catchup_runs=args.max_catchup_runs,
            overlap=args.overlap,
            paused=args.paused,
            actor=args.actor,
        )
    )
    _print_schedule(schedule, out, "created")
    return 0


def delete(args: argparse.Namespace, client: Client, out: Output) -> int:
    client.delete_schedule(args.schedule_id, etag=args.etag)
    if out.json:
        out.message(schedule_service_pb2.DeleteScheduleResponse())
    else:
        out.line(f"schedule {args.schedule_id} deleted (its decided ticks stay in history)")
    return 0


def pause(args: argparse.Namespace, client: Client, out: Output) -> int:
    schedule = client.pause_schedule(args.schedule_id, actor=args.actor, note=args.note)
    _print_schedule(schedule, out, "paused")
    return 0


def resume(args: argparse.Namespace, client: Client, out: Output) -> int:
    schedule = client.resume_schedule(args.schedule_id, actor=args.actor, note=args.note)
    _print_schedule(schedule, out, "resumed")
    return 0


def trigger(args: argparse.Namespace, client: Client, out: Output) -> int:
    response = client.trigger_schedule(
        args.schedule_id, actor=args.actor, idempotency_key=args.idempotency_key
    )
    run = response.run
    if out.json:
        # With --watch the response is the first line of the stream, the watch messages follow.
        (out.message_line if args.watch else out.message)(response)
    else:
        out.line(
            f"run {run.id} started ({run.workflow} v{run.workflow_version}) "
            f"by schedule {args.schedule_id}"
        )
    return _watch(client, out, run.id, 0) if args.watch else 0


def backfill(args: argparse.Namespace, client: Client, out: Output) -> int:
    response = _checked(
        lambda: client.backfill_schedule(args.schedule_id, args.start, args.end, actor=args.actor)
    )
    if out.json:
        out.message(response)
        return 0
    if not response.ticks:
        out.line("no tick of the schedule's spec in that range: nothing started")
        return 0
    time_zone = client.get_schedule(args.schedule_id).spec.time_zone
    out.table(schedule_text.ticks_table(response.ticks, time_zone))
    left = len(response.ticks) - response.started
    out.line(
        f"{len(response.ticks)} ticks in the range: {response.started} runs started, "
        f"{left} left as they were decided before",
        "green" if response.started else "",
    )
    return 0


def preview(args: argparse.Namespace, client: Client, out: Output) -> int:
    if bool(args.schedule_id) == (args.cron is not None):
        raise InputError("preview takes a schedule id or --cron EXPR, one of them")
    if args.schedule_id and (args.tz or args.jitter is not None):
        raise InputError("--tz and --jitter go with --cron (a schedule has its own)")
    spec = None
    if args.cron is not None:
        spec = _checked(lambda: schedule_spec(args.cron, time_zone=args.tz, jitter=args.jitter))
    ticks = client.preview_schedule(args.schedule_id, spec=spec, count=args.count, after=args.after)
    if out.json:
        out.message(schedule_service_pb2.PreviewScheduleResponse(ticks=ticks))
        return 0
    if args.schedule_id:
        time_zone = client.get_schedule(args.schedule_id).spec.time_zone
    else:
        time_zone = args.tz
    if ticks:
        out.table(schedule_text.next_ticks_table(ticks, time_zone, _now()))
    else:
        out.line("no tick to come: the spec has ended")
    return 0


def _print_schedule(schedule: schedule_pb2.Schedule, out: Output, done: str) -> None:
    if out.json:
        out.message(schedule)
    else:
        line, style = schedule_text.schedule_summary(schedule, _now())
        out.line(f"{done}: {line}", style)


def _checked(call: Callable[[], T]) -> T:
    """A client call whose arguments the client checks first: a refused one is bad input."""
    try:
        return call()
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from None


def _now() -> datetime:
    return datetime.now().astimezone()
