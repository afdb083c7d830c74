"""POST /v1/responses: the chat flow (serving/flow.py) with the Responses API's shapes."""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving.flow import handle


async def responses(request: Request) -> Response:
    return await handle(request, "responses")


# Plain Starlette routes: FastAPI's dependency solving costs ~0.1 ms a request and we use none.
routes = [Route("/v1/responses", responses, methods=["POST"])]
