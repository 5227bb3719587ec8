from service.queries.tasks import task_filters, tasks
from service.routes.owned import OwnedEndpoints
from service.schemas import TaskQuery, TaskUpdate

endpoints = OwnedEndpoints(
    noun="task", tag="tasks", store=tasks, update_model=TaskUpdate, query_model=TaskQuery, filters=task_filters
)

routes = [*endpoints.routes("/tasks")]
