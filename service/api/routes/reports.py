from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.auth import current_user
from service.api.errors import NotFound
from service.api.openapi import operation
from service.api.state import app_state
from service.core.queries.reports import get_report


@operation(summary="Download one of your reports (CSV)", tag="jobs", errors=(404,), media_type="text/csv")
async def download_report(request: Request) -> Response:
    user = await current_user(request)
    report = await get_report(app_state(request).db, report_id=request.path_params["report_id"], owner_id=user.id)
    if report is None:
        raise NotFound("Report not found")
    disposition = f'attachment; filename="{report.filename}"'
    return Response(report.content, media_type="text/csv; charset=utf-8", headers={"Content-Disposition": disposition})


routes = [Route("/reports/{report_id:id}", download_report, methods=["GET"])]
