"""The recommendation service: `init_app(settings)` builds it for production and for tests.

Routes are declared in `serving.routes`, handled in `serving.handlers` with the parameter models
of `serving.parameters`; what the service holds while it runs is opened and closed by a
`cleanup_ctx` (`serving.resources.resources` in production, a fake one in the in-process tests).
"""

import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from schemas.config import Settings
from serving.handlers import MAX_BODY_BYTES, Unavailable, json_response
from serving.heap import InFlight
from serving.metrics import Metrics
from serving.parameters import BadRequest
from serving.resources import IN_FLIGHT, METRICS, SETTINGS, resources
from serving.routes import add_routes

log = logging.getLogger("kingfisher.serving")


@web.middleware
async def edge(request: web.Request, handler) -> web.StreamResponse:
    """Time every route; turn BadRequest into 400 with its reasons and Unavailable into 503."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    clock = time.perf_counter()
    try:
        with request.app[IN_FLIGHT].request():
            response = await handler(request)
    except BadRequest as bad:
        response = json_response({"error": "bad request", "reasons": bad.reasons}, status=400)
    except Unavailable as unavailable:
        response = json_response({"error": str(unavailable)}, status=503)
    except web.HTTPException as http:
        response = http
    except Exception:  # a bug: logged with its traceback, answered as JSON like every other error
        log.exception("%s %s failed", request.method, request.path_qs)
        response = json_response({"error": "internal server error"}, status=500)
    metrics = request.app[METRICS]
    metrics.latency.labels(route).observe(time.perf_counter() - clock)
    if response.status >= 400:
        metrics.errors.labels(route, str(response.status)).inc()
    if isinstance(response, web.HTTPException):
        raise response
    return response


def init_app(
    settings: Settings, context: Callable[[web.Application], AsyncIterator[None]] = resources
) -> web.Application:
    """The service; `context` opens and closes what it holds (the real resources unless a test fakes them)."""
    app = web.Application(middlewares=[edge], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[IN_FLIGHT] = InFlight()
    app.cleanup_ctx.append(context)
    add_routes(app)
    return app
