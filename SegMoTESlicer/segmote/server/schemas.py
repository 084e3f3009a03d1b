"""Pydantic models of the JSON bodies, for validation and the OpenAPI document."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from pydantic import BaseModel, Field

from ..wire import HEADER_ARRAY, HEADER_BASE_REVISION, HEADER_UPLOAD


class ErrorDetail(BaseModel):
    status: int = Field(description="HTTP status code")
    code: str = Field(description="machine-readable error code, such as invalid_input or session_expired")
    message: str = Field(description="what failed and what to do, for the user")
    field: Optional[str] = Field(None, description="the invalid request field, when one is to blame")
    error_id: str = Field(description="id of the server log line of this error")


class ErrorBody(BaseModel):
    error: ErrorDetail


class VersionInfo(BaseModel):
    server_version: str = Field(description="version of the segmote package on the server")
    api_version: int = Field(description="major version of the HTTP API; clients require an equal value")
    capabilities: List[str] = Field(description="features this server offers, such as segment, propagate, auto")
    upload_formats: List[str]
    compressions: List[str]
    max_upload_bytes: int
    auth_required: bool


class MemoryInfo(BaseModel):
    host_total_bytes: Optional[int]
    host_available_bytes: Optional[int]
    process_rss_bytes: int
    gpu: Optional[Dict[str, int]] = Field(None, description="free, total and allocated bytes of the CUDA device")


class HealthInfo(BaseModel):
    status: str
    server_version: str
    api_version: int
    model: Dict[str, Any] = Field(description="backbone, checkpoint SHA-256, device, adapters and structures")
    device: str
    sessions: int
    max_sessions: int
    session_idle_timeout_s: float
    memory: MemoryInfo


class SessionInfo(BaseModel):
    session_id: str
    shape_kji: List[int] = Field(description="volume shape in numpy order (K, J, I)")
    origin_lps: List[float] = Field(description="LPS position (mm) of voxel (0, 0, 0)")
    spacing_ijk: List[float] = Field(description="voxel size (mm) along i, j, k")
    direction_lps: List[float] = Field(description="3 x 3 direction matrix, row-major; columns are the i, j, k axes")
    modality: Optional[str]
    dtype: str
    encoder_calls: int = Field(description="slices encoded so far; a cached slice does not raise it")
    cached_slices: int
    segments: Dict[str, int] = Field(description="latest mask revision per segment name")
    idle_timeout_s: float
    jobs: List[str] = Field(description="ids of the session's auto jobs, oldest first")


class AutoRequest(BaseModel):
    structures: List[str] = Field(min_length=1, description="structure names; label value k = the k-th")


class JobStatus(BaseModel):
    job_id: str
    session_id: str
    status: str = Field(description="queued, running, done, failed or cancelled")
    progress: float = Field(description="fraction done, 0 to 1")
    message: str
    structures: List[str]
    version: int = Field(description="raised on every change; pass it back as ?version= to wait for the next")
    elapsed_s: Optional[float]
    error: Optional[ErrorDetail]


class SegmentPromptModel(BaseModel):
    name: str
    view: str = Field("axial", description="axial, coronal or sagittal")
    points: List[List[float]] = Field(default_factory=list, description="[x, y, z] points in coordinate_system")
    point_labels: Optional[List[int]] = Field(None, description="1 = foreground, 0 = background, one per point")
    box: Optional[List[List[float]]] = Field(None, description="two opposite corners [[x0, y0, z0], [x1, y1, z1]]")
    propagate: bool = False
    propagate_limit: Optional[int] = Field(None, description="maximum slices to go in each direction")


class SegmentRequest(BaseModel):
    coordinate_system: str = Field(description="RAS, LPS (millimetres) or IJK (voxel indices)")
    segments: List[SegmentPromptModel] = Field(description="exactly one segment per request")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "invalid input; the message names the field"),
        (401, "missing or invalid bearer token"),
        (404, "unknown or closed session or job"),
        (410, "the session expired after its idle timeout"),
        (413, "upload too large; the message gives the size and the limit"),
        (503, "the server has max_sessions sessions open"),
    )
}

UPLOAD_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER_UPLOAD,
            "in": "header",
            "required": True,
            "description": "JSON object describing the body: format (nii.gz, nii, nrrd, mha, dicom-zip, array), "
            "compression (zlib or none), optional series, window and modality; for arrays also array "
            "{dtype, shape, encoding}, origin_lps, spacing_ijk and direction_lps (9 numbers, row-major).",
            "schema": {"type": "string"},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}

SEGMENT_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER_BASE_REVISION,
            "in": "header",
            "required": False,
            "description": "revision of this segment's mask that the client has (0 or absent: none)",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SegmentRequest.model_json_schema()}},
    },
}

AUTO_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": AutoRequest.model_json_schema()}},
    },
}

BINARY_RESPONSE_DESCRIPTION = (
    f"zlib-compressed array; the {HEADER_ARRAY} header contains its JSON description (dtype, shape, encoding, and for "
    "segment responses offset_kji, revision, replace, iou, slices, encoder_calls, timings_ms)"
)
