"""The classic tutorial's stack, as a baseline for `POST /tasks`: FastAPI, a sync endpoint that checks
the bearer token and calls Celery's `.delay()` with Redis as the broker.

It runs from a virtualenv of its own (.venv-celery, made by `make bench`): Celery's Redis transport
needs a newer redis-py than arq supports, so the two cannot share one.

POST /tasks    check the token, then `process_new_task.delay(...)`; 202 with the Celery task id
"""

import os

import jwt
from celery import Celery
from fastapi import FastAPI, Header
from pydantic import BaseModel

SECRET = os.environ["JWT_SECRET"]

celery = Celery("bench", broker=os.environ["CELERY_BROKER_URL"])


@celery.task
def process_new_task(owner_id: int, title: str, priority: str = "normal") -> None:
    """Never run here: the benchmark measures accepting the job."""


class TaskCreate(BaseModel):
    title: str
    priority: str = "normal"


app = FastAPI()


@app.post("/tasks", status_code=202)
def create_task(task: TaskCreate, authorization: str = Header()) -> dict[str, str]:
    token = authorization.removeprefix("Bearer ")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="taskmanager-api", issuer="taskmanager")
    result = process_new_task.delay(int(claims["sub"]), task.title, task.priority)
    return {"task_id": result.id}


@app.get("/const")
def const() -> dict[str, str]:
    return {"status": "ok"}
