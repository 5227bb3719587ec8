"""Webhooks: the API (CRUD, validation, owner isolation, SSRF refusals), the SSRF rules, and the events
queued in PostgreSQL (job.finished in the finishing statements, task.due, reminder.sent)."""

import base64
import ipaddress
from collections.abc import Awaitable, Callable

import httpx
import pytest
from databases import Database

from jobs.webhooks import Attempt, _next_step, _pinned
from service.core import ssrf
from service.core.queries import job_records
from service.core.queries import webhooks as queries
from service.core.schemas import DeliveryStatus, JobState, WebhookEvent
from service.core.settings import Settings
from service.core.webhooks import emit
from tests.conftest import drain
from tests.test_dashboard import make_admin

MakeUser = Callable[[str], Awaitable[dict[str, str]]]
PUBLIC = "https://93.184.215.14/hooks/tm"  # a public address: no DNS needed


async def _webhook(client: httpx.AsyncClient, headers: dict[str, str], **body: object) -> httpx.Response:
    return await client.post("/webhooks", headers=headers, json={"url": PUBLIC, "events": ["job.finished"], **body})


async def test_register_read_change_delete(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    ada = await make_user("ada")
    created = await _webhook(client, ada, events=["task.due", "job.finished", "task.due"], description="CI")
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["events"] == ["job.finished", "task.due"] and hook["active"] is True
    assert hook["secret"].startswith("whsec_") and len(base64.b64decode(hook["secret"][6:])) == 32

    listed = (await client.get("/webhooks", headers=ada)).json()
    assert [item["id"] for item in listed] == [hook["id"]] and "secret" not in listed[0]
    read = (await client.get(f"/webhooks/{hook['id']}", headers=ada)).json()
    assert read["url"] == PUBLIC and "secret" not in read

    changed = await client.patch(
        f"/webhooks/{hook['id']}", headers=ada, json={"events": ["reminder.sent"], "active": False, "description": None}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["events"] == ["reminder.sent"] and changed.json()["active"] is False
    assert changed.json()["description"] is None

    assert (await client.delete(f"/webhooks/{hook['id']}", headers=ada)).status_code == 204
    assert (await client.get(f"/webhooks/{hook['id']}", headers=ada)).status_code == 404


async def test_rotating_the_secret_keeps_the_old_one_for_a_while(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    ada = await make_user("ada")
    hook = (await _webhook(client, ada)).json()
    assert hook["previous_secret_expires_at"] is None
    rotated = await client.post(f"/webhooks/{hook['id']}/rotate-secret", headers=ada)
    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != hook["secret"]
    assert rotated.json()["previous_secret_expires_at"] > hook["created_at"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://localhost:9000/hook", "localhost resolves to"),
        ("https://user:pw@93.184.215.14/hook", "credentials"),
        ("ftp://93.184.215.14/hook", "Only http and https"),
        ("http:///nohost", "no host"),
        ("http://no-such-host.invalid/hook", "does not resolve"),
    ],
)
async def test_unsafe_urls_are_refused_at_registration(
    client: httpx.AsyncClient, make_user: MakeUser, url: str, reason: str
) -> None:
    ada = await make_user("ada")
    refused = await _webhook(client, ada, url=url)
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "url"] and reason in error["msg"], error
    assert (await client.get("/webhooks", headers=ada)).json() == []


async def test_invalid_bodies_are_refused(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    ada = await make_user("ada")
    for body in (
        {"url": PUBLIC, "events": []},
        {"url": PUBLIC, "events": ["job.started"]},
        {"url": PUBLIC},
        {"url": PUBLIC, "events": ["job.finished"], "secret": "whsec_mine"},
        {"url": "", "events": ["job.finished"]},
    ):
        assert (await client.post("/webhooks", headers=ada, json=body)).status_code == 422, body
    hook = (await _webhook(client, ada)).json()
    moved = await client.patch(f"/webhooks/{hook['id']}", headers=ada, json={"url": "http://10.0.0.1/"})
    assert moved.status_code == 422 and moved.json()["detail"][0]["loc"] == ["body", "url"]


async def test_another_users_webhook_is_not_found(client: httpx.AsyncClient, make_user: MakeUser, db: Database) -> None:
    ada, bob = await make_user("ada"), await make_user("bob")
    hook = (await _webhook(client, ada)).json()
    path = f"/webhooks/{hook['id']}"
    assert (await client.get(path, headers=bob)).status_code == 404
    assert (await client.patch(path, headers=bob, json={"active": False})).status_code == 404
    assert (await client.delete(path, headers=bob)).status_code == 404
    assert (await client.post(f"{path}/rotate-secret", headers=bob)).status_code == 404
    assert (await client.get(f"{path}/deliveries", headers=bob)).status_code == 404
    assert (await client.get("/webhooks", headers=bob)).json() == []
    owner = await db.fetch_val("SELECT id FROM users WHERE username = 'ada'")
    await emit(db, owner, WebhookEvent.JOB_FINISHED, {"job_id": "x"}, event_id="job.finished:x")
    delivery = await db.fetch_val("SELECT id FROM webhook_deliveries")
    await db.execute("UPDATE webhook_deliveries SET status = 'failed'")
    assert (await client.post(f"{path}/deliveries/{delivery}/replay", headers=bob)).status_code == 404
    assert (await client.get(path, headers=ada)).json()["active"] is True  # bob changed nothing


async def test_a_user_has_a_limited_number_of_webhooks(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    ada = await make_user("ada")
    for _ in range(settings.webhooks_per_user):
        assert (await _webhook(client, ada)).status_code == 201
    refused = await _webhook(client, ada)
    assert refused.status_code == 409 and "as many as one user may" in refused.json()["detail"]


async def test_the_delivery_log_and_replay(client: httpx.AsyncClient, make_user: MakeUser, db: Database) -> None:
    ada = await make_user("ada")
    hook = (await _webhook(client, ada, events=["task.due"])).json()
    owner = await db.fetch_val("SELECT id FROM users WHERE username = 'ada'")
    for n in range(3):
        assert await emit(db, owner, WebhookEvent.TASK_DUE, {"task_id": n}, event_id=f"task.due:{n}:1") == 1
    assert await emit(db, owner, WebhookEvent.TASK_DUE, {"task_id": 0}, event_id="task.due:0:1") == 0  # once
    assert await emit(db, owner, WebhookEvent.JOB_FINISHED, {}, event_id="job.finished:y") == 0  # not subscribed

    log = (await client.get(f"/webhooks/{hook['id']}/deliveries?limit=2", headers=ada)).json()
    assert [entry["event_id"] for entry in log] == ["task.due:2:1", "task.due:1:1"]
    assert log[0]["status"] == "pending" and log[0]["attempts"] == 0 and log[0]["data"] == {"task_id": 2}
    rest = (await client.get(f"/webhooks/{hook['id']}/deliveries?offset=2", headers=ada)).json()
    assert [entry["event_id"] for entry in rest] == ["task.due:0:1"]

    first = rest[0]["id"]
    replay = f"/webhooks/{hook['id']}/deliveries/{first}/replay"
    assert (await client.post(replay, headers=ada)).status_code == 409  # still waiting: nothing to replay
    await db.execute("UPDATE webhook_deliveries SET status = 'failed', attempts = 10, next_attempt_at = NULL")
    failed = (await client.get(f"/webhooks/{hook['id']}/deliveries?status=failed", headers=ada)).json()
    assert len(failed) == 3
    replayed = await client.post(replay, headers=ada)
    assert replayed.status_code == 200 and replayed.json()["status"] == "pending" and replayed.json()["attempts"] == 0
    assert (await client.post(f"/webhooks/{hook['id']}/deliveries/999999/replay", headers=ada)).status_code == 404


async def test_finishing_jobs_queues_job_finished_in_the_same_statement(
    client: httpx.AsyncClient, make_user: MakeUser, db: Database
) -> None:
    ada = await make_user("ada")
    await _webhook(client, ada)
    await _webhook(client, ada, events=["task.due"])  # not subscribed: nothing for this one
    owner = await db.fetch_val("SELECT id FROM users WHERE username = 'ada'")
    for job_id in ("j-ok", "j-failed", "j-unowned"):
        await db.execute(
            "INSERT INTO jobs (job_id, name, queue_name, owner_id, state)"
            " VALUES (:id, 'x', 'arq:queue', :owner, 'STARTED')",
            {"id": job_id, "owner": None if job_id == "j-unowned" else owner},
        )
    done = await job_records.succeed_many(db, {"j-ok": {"n": 1}, "j-unowned": None})
    assert set(done) == {"j-ok", "j-unowned"}  # the statement still returns the jobs it finished
    failed = await job_records.finish(
        db, job_id="j-failed", state=JobState.FAILURE, error={"type": "E", "message": "m"}
    )
    assert failed is not None and failed.state is JobState.FAILURE
    assert await job_records.succeed_many(db, {"j-ok": {"n": 2}}) == {}  # final already: nothing twice

    rows = await db.fetch_all("SELECT event_id, event_type, data FROM webhook_deliveries ORDER BY event_id")
    assert [row["event_id"] for row in rows] == ["job.finished:j-failed", "job.finished:j-ok"]
    data = {row["event_id"]: row["data"] for row in rows}
    assert '"state": "SUCCESS"' in data["job.finished:j-ok"] and '"result": {"n": 1}' in data["job.finished:j-ok"]
    assert '"state": "FAILURE"' in data["job.finished:j-failed"]


async def test_task_due_once_per_task_and_due_date(
    client: httpx.AsyncClient, make_user: MakeUser, db: Database
) -> None:
    ada = await make_user("ada")
    await _webhook(client, ada, events=["task.due"])
    owner = await db.fetch_val("SELECT id FROM users WHERE username = 'ada'")
    insert = (
        "INSERT INTO tasks (owner_id, title, due_at, status)"
        " VALUES (:owner, :title, now() + make_interval(mins => :later), :status)"
    )
    for title, later, status in (("past", -1, "todo"), ("future", 60, "todo"), ("done", -60, "done")):
        await db.execute(insert, {"owner": owner, "title": title, "later": later, "status": status})

    assert await queries.announce_due_tasks(db) == (1, 1)
    assert await queries.announce_due_tasks(db) == (0, 0)  # once
    await db.execute("UPDATE tasks SET due_at = now() - interval '1 second' WHERE title = 'future'")
    await db.execute("UPDATE tasks SET due_at = due_at - interval '1 day' WHERE title = 'past'")  # a new due date
    assert await queries.announce_due_tasks(db) == (2, 2)
    rows = await db.fetch_all("SELECT event_id, data FROM webhook_deliveries WHERE event_type = 'task.due'")
    assert len({row["event_id"] for row in rows}) == 3 and all('"title"' in row["data"] for row in rows)


async def test_a_sent_reminder_emits_reminder_sent_once(
    client: httpx.AsyncClient, make_user: MakeUser, db: Database, settings: Settings
) -> None:
    ada = await make_user("ada")
    hook = (await _webhook(client, ada, events=["reminder.sent"])).json()
    created = await client.post("/tasks", headers=ada, json={"title": "Call the bank"})
    await drain(settings)
    task_id = (await client.get(created.headers["location"], headers=ada)).json()["result"]["task_id"]
    assert (await client.post(f"/tasks/{task_id}/remind", headers=ada)).status_code == 202
    await drain(settings)
    log = (await client.get(f"/webhooks/{hook['id']}/deliveries", headers=ada)).json()
    assert [entry["event_type"] for entry in log] == ["reminder.sent"]
    assert log[0]["data"]["title"] == "Call the bank" and log[0]["data"]["recipient"] == "ada@example.com"


def test_refused_addresses() -> None:
    refused = {
        "127.0.0.1": "loopback", "::1": "loopback", "::ffff:127.0.0.1": "loopback", "::ffff:10.0.0.1": "private",
        "169.254.169.254": "metadata", "fd00:ec2::254": "metadata", "fe80::1": "link-local", "224.0.0.1": "multicast",
        "ff02::1": "multicast", "0.0.0.0": "unspecified", "::": "unspecified", "10.0.0.1": "private",
        "172.16.5.4": "private", "192.168.1.1": "private", "fc00::1": "private", "100.64.0.1": "public",
        "240.0.0.1": "reserved", "2002:7f00:1::": "loopback", "64:ff9b::a9fe:a9fe": "metadata",
    }  # fmt: skip
    for text, reason in refused.items():
        why = ssrf.refusal(ipaddress.ip_address(text))
        assert why is not None and reason in why, (text, why)
    for text in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "8.8.8.8"):
        assert ssrf.refusal(ipaddress.ip_address(text)) is None, text


async def test_the_allow_setting() -> None:
    policy = ssrf.Policy.parse(" 127.0.0.1 , 10.0.0.0/8,[::1], hooks.intranet.")
    assert (await ssrf.check("http://127.0.0.1:9/x", policy)).addresses == (ipaddress.ip_address("127.0.0.1"),)
    assert await ssrf.check("http://10.9.8.7/x", policy)
    assert await ssrf.check("http://[::ffff:10.1.1.1]/x", policy)  # the mapped address is the allowed one
    with pytest.raises(ssrf.UnsafeTarget, match="loopback"):
        await ssrf.check("http://127.0.0.2/x", policy)
    with pytest.raises(ssrf.UnsafeTarget, match="metadata"):
        await ssrf.check("http://169.254.169.254/x", policy)
    assert policy.hosts == frozenset({"hooks.intranet"})


async def test_the_connection_goes_to_the_checked_address() -> None:
    target = await ssrf.check("https://localhost:8443/in?x=1", ssrf.Policy.parse("localhost"))
    url, host, extensions = _pinned(target)
    address = str(target.addresses[0])
    assert url in (f"https://{address}:8443/in?x=1", f"https://[{address}]:8443/in?x=1")
    assert host == {"host": "localhost:8443"} and extensions == {"sni_hostname": "localhost"}


def test_retries_back_off_then_fail(settings: Settings) -> None:
    tuned = settings.model_copy(update={"webhook_max_attempts": 3, "webhook_retry_base_seconds": 10.0})
    assert _next_step(Attempt(status_code=204), 1, tuned) == (DeliveryStatus.DELIVERED, None)
    status, wait = _next_step(Attempt(status_code=500), 1, tuned)
    assert status is DeliveryStatus.RETRYING and wait is not None and 5 <= wait <= 10
    status, wait = _next_step(Attempt(error="timeout"), 2, tuned)
    assert status is DeliveryStatus.RETRYING and wait is not None and 10 <= wait <= 20
    assert _next_step(Attempt(status_code=500), 3, tuned) == (DeliveryStatus.FAILED, None)
    assert _next_step(Attempt(error="refused: ...", refused=True), 1, tuned) == (DeliveryStatus.FAILED, None)


async def test_the_dashboard_shows_failing_deliveries(
    client: httpx.AsyncClient, make_user: MakeUser, db: Database
) -> None:
    root, ada = await make_admin(client, db), await make_user("ada")
    await _webhook(client, ada, events=["task.due"])
    owner = await db.fetch_val("SELECT id FROM users WHERE username = 'ada'")
    for n in range(3):
        await emit(db, owner, WebhookEvent.TASK_DUE, {"task_id": n}, event_id=f"task.due:{n}:1")
    failing = "UPDATE webhook_deliveries SET status = :status, attempts = 2, last_error = 'the receiver answered 503'"
    await db.execute(failing + " WHERE event_id = 'task.due:0:1'", {"status": "failed"})
    await db.execute(failing + " WHERE event_id = 'task.due:1:1'", {"status": "retrying"})
    overview = (await client.get("/dashboard/api/overview", headers=root)).json()
    shown = {row["event_id"]: row for row in overview["webhooks_failing"]}
    assert set(shown) == {"task.due:0:1", "task.due:1:1"}  # the pending one is not failing
    assert shown["task.due:0:1"]["username"] == "ada" and shown["task.due:0:1"]["url"] == PUBLIC
    assert shown["task.due:1:1"]["last_error"] == "the receiver answered 503"
