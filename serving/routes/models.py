"""GET /v1/models: the models every upstream serves, merged."""

from starlette.routing import Route
from starlette.requests import Request
from starlette.responses import Response

import orjson

async def list_models(request: Request) -> Response:
    gw = request.app.state.gw
    gw.auth.tenant(request.headers.get("authorization"))
    models = await gw.catalog.models()
    models = [*models, *gw.embeddings.cards()]
    return Response(orjson.dumps({"object": "list", "data": models}), media_type="application/json")


# Plain Starlette routes: FastAPI's dependency solving costs ~0.1 ms a request and we use none.
routes = [Route("/v1/models", list_models, methods=["GET"])]
