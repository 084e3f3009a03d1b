"""The SegMoTE inference server: one shared model, sessions on uploaded volumes, auto jobs.

Build the application with :func:`segmote.server.app.create_app`, or run it
with ``segmote serve`` (:mod:`segmote.server.command`). The wire format is in
:mod:`segmote.wire`; the concurrency model is described in :mod:`segmote.server.app`.
Importing this package imports neither torch nor FastAPI.
"""
