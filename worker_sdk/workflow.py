"""The workflow definition DSL. A `Workflow` collects triggers, steps and transitions in
declaration order, keeps the registry of its task handlers, and produces the contract's
`WorkflowDefinition`.

    payment = Workflow("payment", description="Charge a card")
    payment.trigger("manual", payload=[Field("amount", "number", required=True)])

    @payment.task(queue="payments", retry=Retry(max_attempts=3))
    async def charge(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]: ...

    payment.transition("charge", "complete")

Only light checks happen here (names, duplicates, option types); the server validates the
whole definition at registration and answers with one field violation per problem.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar, overload

from squidmesh.schedule_requests import (
    MissedTicksName,
    OverlapName,
    RepeatedTimeName,
    SkippedTimeName,
    cron_expression,
    policy_fields,
    spec_fields,
)
from squidmesh.v1 import workflow_pb2
from squidmesh.values import to_duration

from worker_sdk.conditions import Condition
from worker_sdk.fields import Field
from worker_sdk.retry import Retry

__all__ = ["COMPLETE", "Handler", "Workflow"]

COMPLETE = "complete"
"""The transition target that ends a run successfully."""

F = TypeVar("F", bound=Callable[..., Any])
OutcomeName = Literal["ok", "error"]
DeadlineActionName = Literal["reject", "fail", "route"]

_OUTCOMES: dict[str, workflow_pb2.Outcome.ValueType] = {
    "ok": workflow_pb2.OUTCOME_OK,
    "error": workflow_pb2.OUTCOME_ERROR,
}
_DEADLINE_ACTIONS: dict[str, workflow_pb2.DeadlineAction.ValueType] = {
    "reject": workflow_pb2.DEADLINE_ACTION_REJECT,
    "fail": workflow_pb2.DEADLINE_ACTION_FAIL,
    "route": workflow_pb2.DEADLINE_ACTION_ROUTE,
}


@dataclass(frozen=True)
class Handler:
    """A function a worker runs for a task step (or a compensation)."""

    name: str
    fn: Callable[..., Any]
    queue: str
    takes_context: bool
    is_async: bool

    @classmethod
    def of(cls, name: str, fn: Callable[..., Any], queue: str) -> Handler:
        return cls(
            name=name,
            fn=fn,
            queue=queue,
            takes_context=_takes_context(fn),
            is_async=inspect.iscoroutinefunction(fn)
            or inspect.iscoroutinefunction(getattr(fn, "__call__", None)),  # noqa: B004
        )

    def call(self, input: Any, ctx: Any) -> Any:
        return self.fn(input, ctx) if self.takes_context else self.fn(input)


class Workflow:
    """A workflow definition under construction; see the module docstring."""

    def __init__(self, name: str, *, description: str = "", version_label: str = "") -> None:
        if not name:
            raise ValueError("a workflow needs a name")
        self.name = name
        self.description = description
        self.version_label = version_label
        self._triggers: list[workflow_pb2.Trigger] = []
        self._steps: list[workflow_pb2.Step] = []
        self._transitions: list[workflow_pb2.Transition] = []
        self._handlers: dict[str, Handler] = {}

    # -- triggers ------------------------------------------------------------------------

    def trigger(
        self,
        name: str,
        *,
        payload: Sequence[Field] = (),
        cron: str | None = None,
        time_zone: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        jitter: float | timedelta | None = None,
        skipped_time: SkippedTimeName | None = None,
        repeated_time: RepeatedTimeName | None = None,
        catchup_window: float | timedelta | None = None,
        missed_ticks: MissedTicksName | None = None,
        max_catchup_runs: int = 0,
        overlap: OverlapName | None = None,
    ) -> None:
        """Declares an entry point: manual (started through StartRun) or, with `cron`, fired
        by the server: registering the workflow makes it the schedule "<workflow>/<name>".
        The first declared trigger is the default.

        A cron trigger's options (durations in seconds or as a timedelta):
        - `cron`: five fields ("0 3 * * *"), six with seconds first ("*/10 * * * * *"), or a
          shorthand ("@hourly", "@daily", "@weekly", "@monthly", "@yearly");
        - `time_zone`: the IANA zone the expression is read in, e.g. "Europe/Paris" (empty:
          UTC);
        - `start_time`, `end_time`: no tick before or after these instants (inclusive;
          timezone-aware datetimes);
        - `jitter`: each tick fires up to this much after its nominal time (the same delay
          for the same tick on every server, never at or past the next tick);
        - `skipped_time`: a tick whose local time does not exist (spring forward) fires at
          the end of the gap ("run_at_gap_end", the default) or not at all ("skip");
        - `repeated_time`: a tick whose local time occurs twice (fall back) fires once, at
          the "first" (the default) or the "last" occurrence;
        - `missed_ticks`: ticks missed while no server ran start no run ("skip", the
          default), only the latest one does ("run_latest"), or each does ("run_all", the
          latest `max_catchup_runs` of them; 0: the server's default, 10); ticks older than
          `catchup_window` (default one hour) are dropped whatever the policy;
        - `overlap`: a tick while the schedule's previous run is still active starts nothing
          ("skip", the default), is held until that run ends, and further ticks are skipped
          while one is held ("buffer_one"), starts anyway ("allow_all"), or starts and then
          cancels that run ("cancel_other")."""
        if not name:
            raise ValueError("a trigger needs a name")
        if any(t.name == name for t in self._triggers):
            raise ValueError(f"workflow {self.name!r}: duplicate trigger {name!r}")
        trigger = workflow_pb2.Trigger(
            name=name, payload=_field_protos(f"trigger {name!r} payload", payload)
        )
        options: dict[str, Any] = {
            "time_zone": time_zone,
            "start_time": start_time,
            "end_time": end_time,
            "jitter": jitter,
            "skipped_time": skipped_time,
            "repeated_time": repeated_time,
        }
        policies: dict[str, Any] = {
            "catchup_window": catchup_window,
            "missed_ticks": missed_ticks,
            "max_catchup_runs": max_catchup_runs,
            "overlap": overlap,
        }
        if cron is None:
            given = [k for k, v in {**options, **policies}.items() if v not in (None, "", 0)]
            if given:
                raise ValueError(f"trigger {name!r}: {', '.join(given)} without a cron expression")
            trigger.manual.SetInParent()
        else:
            try:
                trigger.cron.CopyFrom(
                    workflow_pb2.CronTrigger(
                        expression=cron_expression(cron),
                        **spec_fields(**options),
                        **policy_fields(**policies),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"trigger {name!r}: {exc}") from None
        self._triggers.append(trigger)

    # -- steps ---------------------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> F: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        output_key: str = "",
        retry: Retry | None = None,
        input: Sequence[str] | Mapping[str, str] | None = None,
        attempt_timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        irreversible: bool = False,
        after: Sequence[str] = (),
        compensate: str | Callable[..., Any] | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        output_key: str = "",
        retry: Retry | None = None,
        input: Sequence[str] | Mapping[str, str] | None = None,
        attempt_timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        irreversible: bool = False,
        after: Sequence[str] = (),
        compensate: str | Callable[..., Any] | None = None,
    ) -> Any:
        """Declares a task step run by the decorated function, `fn(input)` or
        `fn(input, ctx)`, sync or async. The step is named after the function unless `name`
        is given; its handler is "<workflow>.<step>"; its queue is the workflow's name unless
        `queue` is given. Durations are in seconds. `input`
        selects the step's input from the run context: a list of top-level keys, or named
        dotted paths ({"amt": "order.amount"}); None passes the whole context. `compensate`
        is a function (registered as handler "<workflow>.<function name>") or a handler name
        that undoes the step when the run fails later. Returns the function unchanged."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            step_name = name or fn.__name__
            handler = f"{self.name}.{step_name}"
            step = self._new_step(step_name, after)
            step.task.handler = handler
            step.task.queue = queue or self.name
            self._set_options(
                step,
                retry=retry,
                input=input,
                output_key=output_key,
                attempt_timeout=attempt_timeout,
                heartbeat_timeout=heartbeat_timeout,
                irreversible=irreversible,
            )
            if compensate is not None:
                step.compensate = self._compensation(compensate, step.task.queue)
            self._add_handler(Handler.of(handler, fn, step.task.queue))
            self._steps.append(step)
            return fn

        return decorate(fn) if fn is not None else decorate

    def wait(self, name: str, *, seconds: float, after: Sequence[str] = ()) -> None:
        """A durable delay: no worker slot is held while it waits."""
        step = self._new_step(name, after)
        step.wait.duration.CopyFrom(to_duration(seconds))
        self._steps.append(step)

    def log(self, name: str, message: str, *, after: Sequence[str] = ()) -> None:
        """A step that writes one structured log line with the run's metadata."""
        step = self._new_step(name, after)
        step.log.message = message
        self._steps.append(step)

    def pause(self, name: str, *, after: Sequence[str] = ()) -> None:
        """A step that stops the run until ResumeRun."""
        step = self._new_step(name, after)
        step.pause.SetInParent()
        self._steps.append(step)

    def approval(
        self,
        name: str,
        *,
        required_approvals: int = 1,
        fields: Sequence[Field] = (),
        deadline: float | timedelta | None = None,
        on_deadline: DeadlineActionName | None = None,
        on_deadline_step: str = "",
        output_key: str = "",
        after: Sequence[str] = (),
    ) -> None:
        """A step that waits for a decision: ApproveStep (outcome ok) once it has
        `required_approvals` approvals from distinct actors, or RejectStep (outcome error).
        `fields` declare what a decision's payload may carry, as a trigger's payload.
        `deadline` (seconds or a timedelta, from when the step is reached) bounds the wait;
        when it passes, `on_deadline` decides: "reject" (the default), "fail" the run, or
        "route" to `on_deadline_step`. The decision is the step's output."""
        if isinstance(required_approvals, bool) or not isinstance(required_approvals, int):
            raise TypeError(f"step {name!r}: required_approvals must be a whole number")
        if required_approvals < 1:
            raise ValueError(f"step {name!r}: required_approvals must be at least 1")
        if on_deadline is not None and on_deadline not in _DEADLINE_ACTIONS:
            raise ValueError(
                f"step {name!r}: unknown on_deadline {on_deadline!r}; "
                f"expected one of {', '.join(_DEADLINE_ACTIONS)}"
            )
        if deadline is None and (on_deadline is not None or on_deadline_step):
            raise ValueError(f"step {name!r}: on_deadline/on_deadline_step need a deadline")
        if (on_deadline == "route") != bool(on_deadline_step):
            raise ValueError(f"step {name!r}: on_deadline='route' goes with on_deadline_step")
        step = self._new_step(name, after)
        step.approval.required_approvals = required_approvals
        step.approval.fields.extend(_field_protos(f"step {name!r}", fields))
        if deadline is not None:
            step.approval.deadline.CopyFrom(to_duration(deadline))
        if on_deadline is not None:
            step.approval.on_deadline = _DEADLINE_ACTIONS[on_deadline]
        step.approval.on_deadline_step = on_deadline_step
        step.output_key = output_key
        self._steps.append(step)

    def wait_event(
        self,
        name: str,
        event: str,
        correlation_key: str,
        *,
        deadline: float | timedelta | None = None,
        output_key: str = "",
        after: Sequence[str] = (),
    ) -> None:
        """A step that waits for `event` published (PublishEvent) with `correlation_key`, a
        template filled from the run context ("order:{order_id}"). An event published since
        the run started counts too. Past `deadline` (seconds or a timedelta) the step fails
        with "deadline_exceeded". The event's payload is the step's output."""
        if not event or not correlation_key:
            raise ValueError(f"step {name!r}: wait_event needs an event and a correlation key")
        step = self._new_step(name, after)
        step.wait_event.event = event
        step.wait_event.correlation_key = correlation_key
        if deadline is not None:
            step.wait_event.deadline.CopyFrom(to_duration(deadline))
        step.output_key = output_key
        self._steps.append(step)

    def wait_child(
        self,
        name: str,
        key: str,
        *,
        deadline: float | timedelta | None = None,
        output_key: str = "",
        after: Sequence[str] = (),
    ) -> None:
        """A step that waits for the end of the child run a handler of this run started with
        `ctx.start_child_run(..., key=...)`; `key` is a template filled from the run context
        like wait_event's correlation key. A completed child completes the step (its output:
        run_id, workflow, status, context); a failed or cancelled one fails it."""
        if not key:
            raise ValueError(f"step {name!r}: wait_child needs the child's key")
        step = self._new_step(name, after)
        step.wait_child.key = key
        if deadline is not None:
            step.wait_child.deadline.CopyFrom(to_duration(deadline))
        step.output_key = output_key
        self._steps.append(step)

    # -- transitions ---------------------------------------------------------------------

    def transition(
        self,
        from_step: str,
        to: str,
        *,
        on: OutcomeName = "ok",
        when: Condition | None = None,
    ) -> None:
        """Moves from `from_step` to `to` (a step or "complete") on its outcome `on`.
        Conditional transitions are tried in declaration order, then the unconditional one."""
        if on not in _OUTCOMES:
            raise ValueError(f"unknown outcome {on!r}; expected 'ok' or 'error'")
        if not from_step or not to:
            raise ValueError("a transition needs a from step and a target")
        transition = workflow_pb2.Transition(from_step=from_step, on=_OUTCOMES[on], to=to)
        if when is not None:
            transition.condition.CopyFrom(when.to_proto())
        self._transitions.append(transition)

    # -- results -------------------------------------------------------------------------

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """Handler name -> handler, for the steps (and compensations) declared so far."""
        return dict(self._handlers)

    @property
    def queues(self) -> list[str]:
        """The task queues the handlers use, in declaration order."""
        return list(dict.fromkeys(h.queue for h in self._handlers.values()))

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self._steps]

    def definition(self) -> workflow_pb2.WorkflowDefinition:
        """The definition as the contract's message (a fresh copy each call)."""
        return workflow_pb2.WorkflowDefinition(
            name=self.name,
            version_label=self.version_label,
            description=self.description,
            triggers=self._triggers,
            steps=self._steps,
            transitions=self._transitions,
        )

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={self.step_names})"

    # -- internals -----------------------------------------------------------------------

    def _new_step(self, name: str, after: Sequence[str]) -> workflow_pb2.Step:
        if not name:
            raise ValueError("a step needs a name")
        if name == COMPLETE:
            raise ValueError(f"{COMPLETE!r} is reserved and cannot name a step")
        if name in self.step_names:
            raise ValueError(f"workflow {self.name!r}: duplicate step {name!r}")
        if isinstance(after, str):
            raise TypeError(f"step {name!r}: after is a list of step names, not a string")
        if name in after:
            raise ValueError(f"step {name!r} cannot run after itself")
        return workflow_pb2.Step(name=name, after=list(after))

    @staticmethod
    def _set_options(
        step: workflow_pb2.Step,
        *,
        retry: Retry | None,
        input: Sequence[str] | Mapping[str, str] | None,
        output_key: str,
        attempt_timeout: float | None,
        heartbeat_timeout: float | None,
        irreversible: bool,
    ) -> None:
        if retry is not None:
            step.retry.CopyFrom(retry.to_proto())
        if attempt_timeout is not None:
            step.attempt_timeout.CopyFrom(to_duration(attempt_timeout))
        if heartbeat_timeout is not None:
            step.heartbeat_timeout.CopyFrom(to_duration(heartbeat_timeout))
        if input is not None:
            step.input.SetInParent()
            if isinstance(input, str):
                raise TypeError(f"step {step.name!r}: input is a list of keys or a mapping")
            if isinstance(input, Mapping):
                step.input.paths.update(input)
            else:
                step.input.keys.extend(input)
        step.output_key = output_key
        step.irreversible = irreversible

    def _compensation(self, compensate: str | Callable[..., Any], queue: str) -> str:
        if isinstance(compensate, str):
            if not compensate:
                raise ValueError("compensate needs a handler name")
            return compensate
        handler = Handler.of(f"{self.name}.{compensate.__name__}", compensate, queue)
        existing = self._handlers.get(handler.name)
        if existing is None:
            self._add_handler(handler)
        elif existing.fn is not compensate:
            raise ValueError(f"handler {handler.name!r} is already another function")
        return handler.name

    def _add_handler(self, handler: Handler) -> None:
        if handler.name in self._handlers:
            raise ValueError(f"duplicate handler {handler.name!r}")
        self._handlers[handler.name] = handler


def _field_protos(where: str, fields: Sequence[Field]) -> list[workflow_pb2.PayloadField]:
    """The fields of a payload contract (a trigger's, an approval's decision), each named once."""
    names = [f.name for f in fields]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{where}: duplicate fields {duplicates}")
    return [f.to_proto() for f in fields]


def _takes_context(fn: Callable[..., Any]) -> bool:
    """True when `fn` accepts a second positional argument (the StepContext)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    positional = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            positional += 1
    if positional == 0:
        raise TypeError(f"handler {fn!r} must accept the step input as its first argument")
    return positional >= 2
