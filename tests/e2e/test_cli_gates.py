"""The CLI's commands for people in the loop, as a user runs them against a real server: resume,
approve and reject (refusals, idempotency keys, votes), events publish (de-duplicated by id),
and the history that records all of it. The workflows are built with the SDK's DSL; their
gates and log steps run in the server, so no worker is needed."""

from __future__ import annotations

import json
import re

from squidmesh.v1 import run_pb2

from tests.e2e.conftest import Cluster
from tests.e2e.test_cli import sequences, squidmesh
from tests.support import wait_for
from worker_sdk import Client, Field, Workflow


def approvals() -> Workflow:
    """hold (pause) → sign_off (approval by two, a `limit` decision field) → approved or
    rejected (logs)."""
    wf = Workflow("cli_gates")
    wf.trigger("manual")
    wf.pause("hold")
    wf.approval(
        "sign_off", required_approvals=2, fields=[Field("limit", "number")], output_key="decision"
    )
    wf.log("approved", "approved by {decision.actors}")
    wf.log("rejected", "rejected: {decision.comments}")
    wf.transition("hold", "sign_off")
    wf.transition("sign_off", "approved")
    wf.transition("sign_off", "rejected", on="error")
    return wf


def settlements() -> Workflow:
    """settled (wait_event payment.settled, key order:{order_id}) → done (log)."""
    wf = Workflow("cli_events")
    wf.trigger("manual", payload=[Field("order_id", "string", required=True)])
    wf.wait_event("settled", "payment.settled", "order:{order_id}", output_key="payment")
    wf.log("done", "settled {payment.amount}")
    wf.transition("settled", "done")
    return wf


def status_of(client: Client, run_id: str) -> int:
    return client.get_run(run_id).status


def test_resume_approve_reject_and_their_history(cluster: Cluster) -> None:
    server = cluster.start_server()
    with cluster.client() as client:
        client.register_workflow(approvals())
        run = client.start_run("cli_gates", {})
        other = client.start_run("cli_gates", {})
    assert run.status == run_pb2.RUN_STATUS_PAUSED

    # The wrong command for the step waiting: refused, one line with its reason, exit 1.
    wrong = squidmesh(server.address, "runs", "approve", run.id, "--actor", "ada")
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.startswith("squidmesh: FAILED_PRECONDITION: ") and "[" in wrong.stderr
    refusal_reason = wrong.stderr.rsplit("[", 1)[1].split("]")[0]

    resumed = squidmesh(
        server.address, "runs", "resume", run.id, "--actor", "ada", "--comment", "go", "--key", "r1"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"{run.id}  cli_gates v1  paused")  # now at sign_off
    again = squidmesh(server.address, "runs", "resume", run.id, "--actor", "ada", "--key", "r1")
    assert again.returncode == 0, again.stderr  # the same key: the first result, nothing new

    first = squidmesh(
        server.address,
        "runs",
        "approve",
        run.id,
        "--actor",
        "ada",
        "--payload",
        '{"limit": 500}',
        "--key",
        "a1",
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == "approval recorded (1 of 2 approvals; 1 more needed)"
    bad = squidmesh(server.address, "runs", "approve", run.id, "--actor", "bob", "--payload", "[]")
    assert bad.returncode == 2 and "--payload must be a JSON object" in bad.stderr
    second = squidmesh(
        server.address, "runs", "approve", run.id, "--step", "sign_off", "--actor", "bob", "--json"
    )
    assert second.returncode == 0, second.stderr
    decided = json.loads(second.stdout)
    assert decided["decided"] is True
    assert (decided["approvals"], decided["required_approvals"]) == (2, 2)

    with cluster.client() as client:
        final = client.wait_for_run(run.id, timeout=60)
    assert final.status == run_pb2.RUN_STATUS_COMPLETED
    shown = squidmesh(server.address, "runs", "get", run.id)
    assert re.search(r"^hold +- +completed .*resumed by ada$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^sign_off +- +completed .*approved by ada, bob$", shown.stdout, re.M)

    # The watch says what each gate waited for, and counts the votes.
    watched = squidmesh(server.address, "runs", "watch", run.id)
    assert watched.returncode == 0, watched.stderr
    assert sequences(watched.stdout) == list(range(1, final.last_sequence + 1))
    assert re.search(r"step_waiting +hold +paused until resumed$", watched.stdout, re.M)
    assert re.search(r"step_waiting +sign_off +waiting for 2 approvals$", watched.stdout, re.M)
    assert re.search(r"approval_voted +sign_off +approved by ada \(1 of 2\)$", watched.stdout, re.M)

    # The history: every command with its actor, key and outcome, refused ones too.
    history = squidmesh(server.address, "runs", "history", run.id, "--all")
    assert history.returncode == 0, history.stderr
    header, *rows = history.stdout.splitlines()
    assert header.split() == ["TIME", "KIND", "WHAT", "ACTOR", "KEY", "OUTCOME"]
    kinds = [row[header.index("KIND") :].split(None, 1) for row in rows]  # after the time
    commands = [what for kind, what in kinds if kind == "command"]
    assert len(commands) == 6, history.stdout  # start, refused, resume, its repeat, 2 approvals
    assert re.match(r"start +- +- +applied$", commands[0]), commands[0]
    assert re.match(r"approve +ada +- +refused \[" + refusal_reason + r"\]: ", commands[1])
    assert re.match(r"resume: go +ada +r1 +applied$", commands[2]), commands[2]
    assert re.match(r"resume +ada +r1 +duplicate$", commands[3]), commands[3]
    assert re.match(r"approve +ada +a1 +applied$", commands[4]), commands[4]
    assert re.match(r"approve sign_off +bob +- +applied$", commands[5]), commands[5]
    events = [what for kind, what in kinds if kind == "event"]
    assert [int(e[1 : e.index("]")]) for e in events] == list(range(1, final.last_sequence + 1))

    # Pages: a page as the server cut it, the token on stderr; the next page (here as JSON,
    # with the proto's names) goes on where it stopped, and together they are the history.
    # (start, run_created, step_waiting, then the refused approval: four entries)
    paged = squidmesh(server.address, "runs", "history", run.id, "--page-size", "4")
    first_rows = paged.stdout.splitlines()[1:]
    token = paged.stderr.split("--page-token ", 1)[1].split()[0]
    as_json = squidmesh(server.address, "runs", "history", run.id, "--page-size", "4", "--json")
    first_page = json.loads(as_json.stdout)
    assert len(first_page["entries"]) == len(first_rows) == 4
    assert first_page["next_page_token"] == token
    refused = [e["command"] for e in first_page["entries"] if "command" in e][1]
    assert refused["outcome"] == "COMMAND_OUTCOME_REFUSED" and refused["actor"] == "ada"
    assert refused["refusal_reason"] == refusal_reason
    rest = squidmesh(server.address, "runs", "history", run.id, "--page-token", token, "--json")
    entries = json.loads(rest.stdout)["entries"]
    assert len(first_rows) + len(entries) == len(rows)
    assert all(("command" in e) != ("event" in e) and "time" in e for e in entries)
    later = [int(e["event"]["sequence"]) for e in entries if "event" in e]
    assert later == list(range(final.last_sequence - len(later) + 1, final.last_sequence + 1))

    # Reject: the error route, with the rejection's comment in the context.
    squidmesh(server.address, "runs", "resume", other.id, "--actor", "ada")
    rejected = squidmesh(
        server.address, "runs", "reject", other.id, "--actor", "carol", "--comment", "too much"
    )
    assert rejected.returncode == 0, rejected.stderr
    with cluster.client() as client:
        wait_for(
            lambda: status_of(client, other.id) == run_pb2.RUN_STATUS_COMPLETED,
            30,
            "the rejected run ends on its error route",
        )
        ended = client.get_run(other.id)
    assert [s.name for s in ended.steps] == ["hold", "sign_off", "rejected"]
    late = squidmesh(server.address, "runs", "approve", other.id, "--actor", "dan")
    assert late.returncode == 1 and "FAILED_PRECONDITION" in late.stderr


def test_events_publish_resolves_the_waiting_run_once(cluster: Cluster) -> None:
    server = cluster.start_server()
    with cluster.client() as client:
        client.register_workflow(settlements())
        run = client.start_run("cli_events", {"order_id": "7"})
    assert run.status == run_pb2.RUN_STATUS_WAITING

    published = squidmesh(
        server.address,
        "events",
        "publish",
        "payment.settled",
        "--key",
        "order:7",
        "--payload",
        '{"amount": 12.5}',
        "--id",
        "evt-1",
        "--actor",
        "shop",
    )
    assert published.returncode == 0, published.stderr
    assert published.stdout.splitlines() == [
        "event evt-1 published",
        f"resolved 1 run(s): {run.id}",
    ]
    repeated = squidmesh(
        server.address, "events", "publish", "payment.settled", "--key", "order:7", "--id", "evt-1"
    )
    assert repeated.returncode == 0, repeated.stderr
    assert repeated.stdout.startswith("event evt-1 was already published at ")
    assert "nothing changed" in repeated.stdout

    with cluster.client() as client:
        final = client.wait_for_run(run.id, timeout=60)
    assert final.status == run_pb2.RUN_STATUS_COMPLETED
    shown = squidmesh(server.address, "runs", "get", run.id, "--json")
    assert json.loads(shown.stdout)["context"]["payment"] == {"amount": 12.5}

    # Without --id the CLI's client chooses one; nothing waits for this key.
    unclaimed = squidmesh(
        server.address, "events", "publish", "payment.settled", "--key", "order:8", "--json"
    )
    assert unclaimed.returncode == 0, unclaimed.stderr
    answer = json.loads(unclaimed.stdout)
    assert answer["event_id"] and answer["created"] is True
    assert "resolved_run_ids" not in answer  # empty: JSON leaves it out, as grpcurl does
    plain = squidmesh(server.address, "events", "publish", "other", "--key", "x")
    assert plain.stdout.splitlines()[1].startswith("no run was waiting for it")

    history = squidmesh(server.address, "runs", "history", run.id)
    header, *rows = history.stdout.splitlines()
    kinds = [row[header.index("KIND") :].split(None, 1) for row in rows]
    published_rows = [what for kind, what in kinds if kind == "command" and "payment" in what]
    assert len(published_rows) == 1  # the repeat changed nothing on the run
    assert re.match(r"event settled payment\.settled +shop +evt-1 +applied$", published_rows[0])
    assert re.search(
        r"step_waiting settled waiting for event payment\.settled key order:7", history.stdout
    )
