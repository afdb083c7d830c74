"""GET /v1/models: the models every upstream serves, merged."""

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

import orjson

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    gw = request.app.state.gw
    gw.auth.tenant(request.headers.get("authorization"))
    models = await gw.catalog.models()
    return Response(orjson.dumps({"object": "list", "data": models}), media_type="application/json")
