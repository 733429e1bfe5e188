"""The refusal of an upload: an HTTP status (4xx, or 503 when the decode pool is full) and a
message that names no header value or free text. Its own module so that the decoders
(`api.ingest`, `api.dicom`) can raise it without importing each other."""

from __future__ import annotations


class UploadRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def __reduce__(self):
        # Raised in a decode process and sent back to the API (api/decode_pool.py) with both fields.
        return (UploadRejected, (self.status, self.message))
