"""The FastAPI application: routes for version, health, sessions, prompts and auto jobs.

Concurrency model: one :class:`Engine` (one model) serves every session. The
model is not thread-safe, so every call into it acquires ``model_lock``. Model
calls, decompression and volume reading run in worker threads, never on the
event loop. Prompts on one session are serialised by the session's lock,
taken before the model lock. Auto jobs run on their own worker threads and
hold the model lock for their whole run, so clicks on other sessions wait
until the job ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine.auto import check_structures
from ..engine.session import Engine, VolumeSession
from ..errors import InputError
from ..protocol import parse_prompts
from ..wire import (
    API_VERSION,
    COMPRESSIONS,
    HEADER_ARRAY,
    HEADER_AUTHORIZATION,
    HEADER_BASE_REVISION,
    HEADER_CLIENT_API_VERSION,
    HEADER_UPLOAD,
    MEDIA_TYPE_BINARY,
    PATH_AUTO_JOB,
    PATH_AUTO_JOB_CANCEL,
    PATH_AUTO_JOB_RESULT,
    PATH_AUTO_JOBS,
    PATH_HEALTH,
    PATH_SEGMENT,
    PATH_SESSION,
    PATH_SESSIONS,
    PATH_VERSION,
    UPLOAD_FORMATS,
    UploadDescription,
    dump_header_json,
    encode_array,
    load_header_json,
)
from . import memory
from .auth import check_bearer_token
from .errors import ConflictError, InvalidRequestError, NotFoundError, as_api_error, error_response
from .jobs import MAX_FINISHED_JOBS_PER_SESSION, AutoJob, run_job
from .schemas import (
    AUTO_OPENAPI,
    BINARY_RESPONSE_DESCRIPTION,
    ERROR_RESPONSES,
    SEGMENT_OPENAPI,
    UPLOAD_OPENAPI,
    AutoRequest,
    HealthInfo,
    JobStatus,
    SessionInfo,
    VersionInfo,
)
from .segmenting import auto_on_session, segment_on_session
from .sessions import Session, SessionRegistry
from .settings import MAX_JSON_BODY_BYTES, ServerSettings
from .uploads import read_body, volume_from_upload

logger = logging.getLogger(__name__)

CAPABILITIES = ("segment", "propagate", "changed-region", "auto", "array-upload", "file-upload", "dicom-zip")

# Maximum seconds a job status request waits for a change (long polling).
MAX_JOB_WAIT_SECONDS = 30.0

# Auto jobs run on this many threads; they queue on the model lock anyway.
JOB_THREADS = 2

# Auto jobs a session may have queued or running at once.
MAX_ACTIVE_JOBS_PER_SESSION = 1


class ErrorHandlingRoute(APIRoute):
    """A route that turns every exception of its handler into a JSON error response."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        label = f"{','.join(sorted(self.methods))} {self.path}"

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as error:  # noqa: BLE001 - mapped to a status code, never a traceback
                return error_response(error, label)

        return handle


def _state(request: Request) -> Any:
    return request.app.state


async def require_client(request: Request) -> None:
    """Check the bearer token and the client's API version on every request that needs them."""
    state = _state(request)
    check_bearer_token(request.headers.get(HEADER_AUTHORIZATION), state.settings.token)
    offered = request.headers.get(HEADER_CLIENT_API_VERSION)
    if offered is not None and offered.strip() != str(API_VERSION):
        error = InvalidRequestError(
            f"client API version {offered!r} does not match the server's {API_VERSION}; "
            "install the segmote version that matches the server",
            field=HEADER_CLIENT_API_VERSION,
        )
        error.code = "version_mismatch"
        raise error


async def read_json(request: Request) -> Any:
    """Read a JSON request body of at most :data:`MAX_JSON_BODY_BYTES`."""
    body = await read_body(request, MAX_JSON_BODY_BYTES, "request body")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequestError(f"the request body is not valid JSON: {error}", field="body") from None


def _base_revision(request: Request) -> int:
    text = request.headers.get(HEADER_BASE_REVISION, "0").strip()
    if not text.isdigit():
        raise InvalidRequestError(f"{HEADER_BASE_REVISION} must be a whole number >= 0, got {text!r}", field=HEADER_BASE_REVISION)
    return int(text)


def session_info(session: Session, settings: ServerSettings) -> dict[str, Any]:
    """Describe a session as a :class:`SessionInfo` body."""
    volume_session = session.volume_session
    if volume_session is None:
        raise NotFoundError(f"session {session.id} was closed; open a new session", field="session_id")
    volume = volume_session.volume
    grid = volume.grid
    return {
        "session_id": session.id,
        "shape_kji": list(grid.shape_kji),
        "origin_lps": list(grid.origin_lps),
        "spacing_ijk": list(grid.spacing_ijk),
        "direction_lps": [value for row in grid.direction_lps for value in row],
        "modality": volume.modality,
        "dtype": str(volume.array.dtype),
        "encoder_calls": volume_session.encoder_calls,
        "cached_slices": len(volume_session.cache),
        # list() copies the items in one step, while a worker thread may add a segment.
        "segments": {name: state.revision for name, state in list(session.segments.items())},
        "idle_timeout_s": settings.session_idle_timeout_s,
        "jobs": list(session.jobs),
    }


def _find_job(session: Session, job_id: str) -> AutoJob:
    job = session.jobs.get(job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} not found on session {session.id}", field="job_id")
    return job


async def _reap_forever(app: FastAPI) -> None:
    """Expire idle sessions every ``reap_interval_s`` and give their memory back."""
    state = app.state
    while True:
        await asyncio.sleep(state.settings.reap_interval_s)
        try:
            expired = state.registry.expire_idle()
            if expired and state.engine.device.type == "cuda":
                await run_in_threadpool(_empty_cuda_cache, state.model_lock)
        except Exception:  # noqa: BLE001 - the reaper must survive any single failure
            logger.exception("Reaper pass failed; retrying at the next interval")


def _empty_cuda_cache(model_lock: threading.Lock) -> None:
    import torch

    with model_lock:
        torch.cuda.empty_cache()


def create_app(engine: Engine, settings: Optional[ServerSettings] = None) -> FastAPI:
    """Build the application around a loaded engine.

    Args:
        engine: the model shared by all sessions.
        settings: limits and the token; defaults to :class:`ServerSettings`.
    """
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap_forever(app))
        logger.info(
            "Server ready: model %s on %s, at most %d sessions, idle timeout %.0f s, upload limit %d bytes, %s",
            engine.info.get("backbone"), engine.info.get("device"), settings.max_sessions,
            settings.session_idle_timeout_s, settings.max_upload_bytes,
            "token required" if settings.token else "no token",
        )
        try:
            yield
        finally:
            reaper.cancel()
            app.state.registry.close_all()
            app.state.job_executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="SegMoTE inference server",
        version=__version__,
        description="Sessions on uploaded volumes, prompted segmentation returning changed regions, and auto jobs.",
        lifespan=lifespan,
    )
    app.router.route_class = ErrorHandlingRoute
    app.state.engine = engine
    app.state.settings = settings
    app.state.registry = SessionRegistry(settings.max_sessions, settings.session_idle_timeout_s)
    app.state.model_lock = threading.Lock()
    app.state.job_executor = ThreadPoolExecutor(max_workers=JOB_THREADS, thread_name_prefix="segmote-job")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and methods: keep the common error body.
        api_error = as_api_error(error)
        api_error.status, api_error.code, api_error.message = error.status_code, "not_found", str(error.detail)
        if error.status_code == 405:
            api_error.code = "method_not_allowed"
        return error_response(api_error, f"{request.method} {request.url.path}")

    public = APIRouter(route_class=ErrorHandlingRoute)
    protected = APIRouter(route_class=ErrorHandlingRoute, dependencies=[Depends(require_client)], responses=ERROR_RESPONSES)
    _add_public_routes(public)
    _add_session_routes(protected)
    _add_job_routes(protected)
    app.include_router(public)
    app.include_router(protected)
    return app


def _add_public_routes(router: APIRouter) -> None:
    @router.get(PATH_VERSION, response_model=VersionInfo, summary="API version and capabilities (no token needed)")
    async def version(request: Request) -> dict[str, Any]:
        settings: ServerSettings = _state(request).settings
        return {
            "server_version": __version__,
            "api_version": API_VERSION,
            "capabilities": list(CAPABILITIES),
            "upload_formats": list(UPLOAD_FORMATS),
            "compressions": list(COMPRESSIONS),
            "max_upload_bytes": settings.max_upload_bytes,
            "auth_required": settings.token is not None,
        }

    @router.get(
        PATH_HEALTH, response_model=HealthInfo, summary="Model, device, version and free memory",
        dependencies=[Depends(require_client)], responses=ERROR_RESPONSES,
    )
    async def health(request: Request) -> dict[str, Any]:
        state = _state(request)
        host = memory.host_memory()
        return {
            "status": "ok",
            "server_version": __version__,
            "api_version": API_VERSION,
            "model": state.engine.info,
            "device": str(state.engine.device),
            "sessions": len(state.registry),
            "max_sessions": state.settings.max_sessions,
            "session_idle_timeout_s": state.settings.session_idle_timeout_s,
            "memory": {
                "host_total_bytes": host["total_bytes"],
                "host_available_bytes": host["available_bytes"],
                "process_rss_bytes": memory.process_rss_bytes(),
                "gpu": memory.gpu_memory(state.engine.device),
            },
        }


def _add_session_routes(router: APIRouter) -> None:
    @router.post(
        PATH_SESSIONS, status_code=201, response_model=SessionInfo, openapi_extra=UPLOAD_OPENAPI,
        summary="Upload a volume and open a session",
    )
    async def create_session(request: Request) -> dict[str, Any]:
        state = _state(request)
        settings: ServerSettings = state.settings
        description = UploadDescription.from_json(load_header_json(request.headers.get(HEADER_UPLOAD), HEADER_UPLOAD))
        with state.registry.reservation():
            start = time.perf_counter()
            body = await read_body(request, settings.max_upload_bytes, "upload")
            received = time.perf_counter()
            volume = await run_in_threadpool(volume_from_upload, description, body, settings.max_expanded_bytes)
            volume_session = await run_in_threadpool(
                VolumeSession, state.engine, volume, description.window, description.modality, settings.cache_bytes
            )
            session = state.registry.add(volume_session, len(body))
        logger.info(
            "Session %s created: %s %s volume from %d bytes (%s), receive %.0f ms, decode %.0f ms; %d open",
            session.id, list(volume.grid.shape_kji), volume.array.dtype, len(body), description.format,
            (received - start) * 1000, (time.perf_counter() - received) * 1000, len(state.registry),
        )
        return session_info(session, settings)

    @router.get(PATH_SESSION, response_model=SessionInfo, summary="Describe a session and its encoder counter")
    async def get_session(request: Request, session_id: str) -> dict[str, Any]:
        state = _state(request)
        with state.registry.lease(session_id) as session:
            return session_info(session, state.settings)

    @router.delete(PATH_SESSION, status_code=204, summary="Close a session and free its memory")
    async def delete_session(request: Request, session_id: str) -> Response:
        _state(request).registry.close(session_id)
        return Response(status_code=204)

    @router.post(
        PATH_SEGMENT, openapi_extra=SEGMENT_OPENAPI, response_class=Response,
        responses={200: {"content": {MEDIA_TYPE_BINARY: {}}, "description": BINARY_RESPONSE_DESCRIPTION}},
        summary="Segment one prompt; returns the changed region of the segment's mask",
    )
    async def segment(request: Request, session_id: str) -> Response:
        state = _state(request)
        with state.registry.lease(session_id) as session:
            base_revision = _base_revision(request)
            prompts = parse_prompts(await read_json(request))
            if len(prompts.segments) != 1:
                raise InvalidRequestError(
                    f"segments has {len(prompts.segments)} entries; send one segment per request", field="segments"
                )
            region, payload = await run_in_threadpool(
                segment_on_session, session, prompts.segments[0], prompts.coordinate_system, base_revision,
                state.model_lock,
            )
        return Response(payload, media_type=MEDIA_TYPE_BINARY, headers={HEADER_ARRAY: dump_header_json(region.to_json())})


def _check_structures(requested: list[str], known: list[str]) -> list[str]:
    if not known:
        raise InvalidRequestError(
            "auto-segmentation needs SegMoTE adapters, but this server runs the bare backbone; "
            "start it with --adapters default or --adapters PATH",
            field="structures",
        )
    try:
        return check_structures(requested, known)
    except InputError as error:
        raise InvalidRequestError(str(error), field="structures") from None


def _add_job_routes(router: APIRouter) -> None:
    @router.post(
        PATH_AUTO_JOBS, status_code=202, response_model=JobStatus, summary="Start an auto-segmentation job",
        openapi_extra=AUTO_OPENAPI,
    )
    async def start_auto(request: Request, session_id: str) -> dict[str, Any]:
        state = _state(request)
        try:
            body = AutoRequest.model_validate(await read_json(request))
        except ValidationError as error:
            raise as_api_error(RequestValidationError(error.errors())) from None
        structures = _check_structures(body.structures, state.engine.structures)
        with state.registry.lease(session_id) as session:
            if sum(job.active for job in session.jobs.values()) >= MAX_ACTIVE_JOBS_PER_SESSION:
                raise ConflictError("an auto job is already running on this session; wait for it or cancel it")
            _forget_old_jobs(session)
            job = AutoJob(session.id, structures)
            session.jobs[job.id] = job
            volume_session = session.volume_session

            def work(running: AutoJob) -> Any:
                return auto_on_session(volume_session, running, state.model_lock)

            def error_body(error: Exception) -> dict[str, Any]:
                return json.loads(error_response(error, f"auto job {job.id}").body)["error"]

            state.job_executor.submit(run_job, job, work, error_body)
            return job.snapshot()

    @router.get(PATH_AUTO_JOB, response_model=JobStatus, summary="Job status; waits up to wait_s for a change")
    async def job_status(request: Request, session_id: str, job_id: str, version: int = -1, wait_s: float = 0.0) -> dict[str, Any]:
        state = _state(request)
        with state.registry.lease(session_id) as session:
            job = _find_job(session, job_id)
            if wait_s > 0 and job.version == version:
                await run_in_threadpool(job.wait_for_change, version, min(wait_s, MAX_JOB_WAIT_SECONDS))
            return job.snapshot()

    @router.post(PATH_AUTO_JOB_CANCEL, response_model=JobStatus, summary="Cancel a job")
    async def cancel_job(request: Request, session_id: str, job_id: str) -> dict[str, Any]:
        with _state(request).registry.lease(session_id) as session:
            job = _find_job(session, job_id)
            if job.cancel():
                logger.info("Job %s on session %s cancelled by the client", job.id, session.id)
            return job.snapshot()

    @router.get(
        PATH_AUTO_JOB_RESULT, response_class=Response,
        responses={200: {"content": {MEDIA_TYPE_BINARY: {}}, "description": BINARY_RESPONSE_DESCRIPTION}},
        summary="The label map of a finished job",
    )
    async def job_result(request: Request, session_id: str, job_id: str) -> Response:
        with _state(request).registry.lease(session_id) as session:
            job = _find_job(session, job_id)
            if job.status != "done" or job.result is None:
                raise ConflictError(f"job {job_id} is {job.status}, so it has no result")
            description, payload = await run_in_threadpool(encode_array, job.result)
        header = {"array": description.to_json(), "labels": {str(k): name for k, name in enumerate(job.structures, 1)}}
        return Response(payload, media_type=MEDIA_TYPE_BINARY, headers={HEADER_ARRAY: dump_header_json(header)})


def _forget_old_jobs(session: Session) -> None:
    """Drop the oldest finished jobs beyond :data:`MAX_FINISHED_JOBS_PER_SESSION`."""
    finished = [job_id for job_id, job in session.jobs.items() if not job.active]
    for job_id in finished[: max(0, len(finished) - MAX_FINISHED_JOBS_PER_SESSION + 1)]:
        del session.jobs[job_id]
