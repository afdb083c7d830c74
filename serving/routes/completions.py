"""POST /v1/completions."""

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from serving.generation import handle

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await handle(request, "completion")
