"""POST /v1/completions."""

from starlette.routing import Route
from starlette.requests import Request
from starlette.responses import Response

from serving.flow import handle

async def completions(request: Request) -> Response:
    return await handle(request, "completion")


# Plain Starlette routes: FastAPI's dependency solving costs ~0.1 ms a request and we use none.
routes = [Route("/v1/completions", completions, methods=["POST"])]
