"""GET /metrics: Prometheus text that prometheus-client parses, with counters that move exactly."""

from collections.abc import Awaitable, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.core.settings import Settings
from tests.conftest import METRICS_TOKEN, MailBox, background_worker, drain

MakeUser = Callable[[str], Awaitable[dict[str, str]]]
# alice's own address, verified: the demo email goes to no one else.
OWN_ADDRESS = {"recipient_email": "alice@example.com", "username": "X"}


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, /, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


async def test_job_counters_move_by_the_jobs_run(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    await drain(settings)  # the welcome email
    before = await scrape(client)

    for title in ("one", "two", "three"):
        assert (await client.post("/tasks", headers=alice, json={"title": title})).status_code == 202
    await client.post("/jobs/long-calc", headers=alice, json={"a": 1, "b": 2, "step_seconds": 0})
    aborted = (await client.post("/jobs/long-calc", headers=alice, json={"a": 1, "b": 2, "step_seconds": 0})).json()
    await client.delete(f"/jobs/{aborted['job_id']}", headers=alice)
    await drain(settings)
    after = await scrape(client)

    def delta(metric: str, job: str) -> float:
        return value(after, metric, name=job) - value(before, metric, name=job)

    assert delta("jobs_enqueued_total", "process_new_task") == 3
    assert delta("jobs_started_total", "process_new_task") == 3
    assert delta("jobs_succeeded_total", "process_new_task") == 3
    assert delta("jobs_failed_total", "process_new_task") == 0
    assert delta("jobs_enqueued_total", "long_running_calculation") == 2
    assert delta("jobs_succeeded_total", "long_running_calculation") == 1
    assert delta("jobs_aborted_total", "long_running_calculation") == 1
    assert delta("job_duration_seconds_count", "process_new_task") == 3
    assert value(after, "job_duration_seconds_bucket", name="process_new_task", le="+Inf") >= 3
    assert value(after, "jobs_queued") == 0


async def test_failures_and_retries_are_counted(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser, mail: MailBox
) -> None:
    alice = await make_user("alice")
    await drain(settings)
    before = await scrape(client)
    mail.refuse_next = ["421 busy", "550 no such mailbox"]
    await client.post("/jobs/send-email", headers=alice, json=OWN_ADDRESS)
    await drain(settings)
    after = await scrape(client)
    for metric, expected in (("jobs_retried_total", 1), ("jobs_failed_total", 1), ("jobs_started_total", 2)):
        moved = value(after, metric, name="send_welcome_email") - value(before, metric, name="send_welcome_email")
        assert moved == expected, metric


async def test_http_metrics_by_route_template(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    before = await scrape(client)
    for item_id in (1, 2, 3):
        await client.get(f"/items/{item_id}", headers=alice)
    after = await scrape(client)
    labels = {"method": "GET", "route": "/items/{id}", "status": "404"}
    assert value(after, "http_requests_total", **labels) - value(before, "http_requests_total", **labels) == 3
    count = {"method": "GET", "route": "/items/{id}"}
    assert value(after, "http_request_duration_seconds_count", **count) >= 3


async def test_gauges_show_queue_and_workers(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    for _ in range(2):
        await client.post("/tasks", headers=alice, json={"title": "queued"})
    queued = await scrape(client)
    assert value(queued, "jobs_queued") == 3  # two tasks and the welcome email
    assert value(queued, "jobs_oldest_queued_age_seconds") > 0
    async with background_worker(settings):
        for _ in range(200):
            live = await scrape(client)
            if value(live, "workers_alive") == 2 and value(live, "jobs_queued") == 0:
                break
    assert value(live, "workers_alive") == 2  # one per queue
    assert value(live, "jobs_queued") == 0
    assert value(await scrape(client), "workers_alive") == 0  # it left the list as it stopped
