"""POST /v1/embeddings."""

from starlette.routing import Route

from serving.embeddings import handle

# Plain Starlette routes: FastAPI's dependency solving costs ~0.1 ms a request and we use none.
routes = [Route("/v1/embeddings", handle, methods=["POST"])]
