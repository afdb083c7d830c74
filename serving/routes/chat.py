"""POST /v1/chat/completions."""

from starlette.routing import Route
from starlette.requests import Request
from starlette.responses import Response

from serving.flow import handle

async def chat_completions(request: Request) -> Response:
    return await handle(request, "chat")


# Plain Starlette routes: FastAPI's dependency solving costs ~0.1 ms a request and we use none.
routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
