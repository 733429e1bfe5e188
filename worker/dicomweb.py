"""The configured DICOMweb server (`WHATIF_DICOMWEB_URL`), through dicomweb-client: an instance
fetched by its UIDs (WADO-RS) as a job's input, and a job's results stored back (STOW-RS).

Every failure is an error with a sentence safe to show to a client: `NotOnServer` (the server
answered that it does not hold the instance), `ServerUnavailable` (it cannot be reached, did not
answer in time, refused the credentials, or answered with an error) and `InstanceTooLarge` (the
instance is larger than an upload may be: its download stops there, see `BoundedSession`). The sentences name
no UID: the UIDs of a patient's study identify it. dicomweb-client and urllib3 log each request's
URL (the UIDs) at DEBUG; their loggers are kept above it.
"""

from __future__ import annotations

import contextlib
import io
import logging

logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)  # its DEBUG lines carry the URL


class DicomwebError(Exception):
    """A DICOMweb request failed; the message is meant for the client."""


class NotOnServer(DicomwebError):
    """The server does not hold the instance the job names."""


class ServerUnavailable(DicomwebError):
    """The server cannot be reached, or answered with an error."""


class InstanceTooLarge(DicomwebError):
    """The instance's answer is larger than the limit: its download was stopped."""


# A WADO-RS answer wraps the instance in a multipart/related envelope (a boundary and a few part
# headers: under a kilobyte from Orthanc); this much is allowed above the instance limit for it.
ENVELOPE_BYTES = 64 * 1024
# Read this much at a time while counting: a refusal has read at most the limit and one chunk more.
CHUNK_BYTES = 256 * 1024


def _session():
    import requests

    class BoundedSession(requests.Session):
        """A session whose GET answers are read only up to `max_bytes`: past it `InstanceTooLarge`,
        and the connection is closed rather than drained.

        dicomweb-client's `retrieve_instance` asks its session for the whole answer at once
        (`stream=False`), so a bound after it would come after the download. Here every GET is
        streamed and counted, and its bytes are put back as the answer's content, so the library
        parses them as it would have. A Content-Length above the bound is refused before a body
        byte is read. The count is of the decoded body (requests undoes a gzip Content-Encoding),
        so a compressed answer cannot inflate past it either. A refusal is remembered: the
        library's retry (any exception is retried) fails at once instead of downloading again.
        """

        max_bytes: int | None = None
        refusal: str | None = None

        def request(self, method, url, *args, **kwargs):
            if self.max_bytes is None or method.upper() != "GET":
                return super().request(method, url, *args, **kwargs)
            if self.refusal is not None:
                raise InstanceTooLarge(self.refusal)
            kwargs["stream"] = True
            response = super().request(method, url, *args, **kwargs)
            bound = self.max_bytes + ENVELOPE_BYTES
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > bound:
                self._refuse(response)
            body = bytearray()
            for chunk in response.iter_content(CHUNK_BYTES):
                body += chunk
                if len(body) > bound:
                    self._refuse(response)
            # requests' own cache of a read body: what `response.content` returns from here on.
            response._content, response._content_consumed = bytes(body), True
            response.close()
            return response

        def _refuse(self, response) -> None:
            response.close()  # the rest is never read: the connection goes, not back to the pool
            self.refusal = (
                f"the instance on the DICOMweb server is larger than {self.max_bytes / 2**20:.1f} MiB, the most "
                "an upload may be (WHATIF_MAX_UPLOAD_BYTES); its download was stopped there"
            )
            raise InstanceTooLarge(self.refusal)

    return BoundedSession()


def client(settings, max_bytes: int | None = None):
    """A `DICOMwebClient` for the settings' server (HTTP basic auth when a user is set); with
    `max_bytes`, a GET answer is read only up to it (`InstanceTooLarge` past it)."""
    from dicomweb_client import DICOMwebClient

    if not settings.dicomweb_url:
        raise ServerUnavailable("no DICOMweb server is configured (WHATIF_DICOMWEB_URL)")
    session = _session()
    session.max_bytes = max_bytes
    if settings.dicomweb_username:
        password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
        session.auth = (settings.dicomweb_username, password)
    dicomweb = DICOMwebClient(settings.dicomweb_url, session=session, timeout=settings.dicomweb_timeout_s)
    # dicomweb-client tries 5 times, waiting 1, 2, 4, 8 s between: 30 s before a server that is down
    # fails the request. Once again after 0.5 s is enough for a blip; a job should not wait longer.
    dicomweb.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=250)
    return dicomweb


def fetch_instance(settings, study: str, series: str, instance: str, max_bytes: int | None = None) -> bytes:
    """The instance as a DICOM file's bytes (WADO-RS), in the transfer syntax the server holds it in.
    `max_bytes` (the upload limit): a larger answer is refused while it arrives (`InstanceTooLarge`)."""
    with _answered("fetching the instance"):
        ds = client(settings, max_bytes).retrieve_instance(
            study, series, instance, media_types=(("application/dicom", "*"),)
        )
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def store_instances(settings, files: list[bytes]) -> None:
    """Store DICOM files on the server (one STOW-RS request); any instance refused fails the call."""
    import pydicom

    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    with _answered("storing the results"):
        answer = client(settings).store_instances(datasets)
    # A STOW-RS answer lists the instances it refused in FailedSOPSequence (PS3.18 10.5.3).
    if answer is not None and len(answer.get("FailedSOPSequence", [])):
        raise ServerUnavailable(
            f"the DICOMweb server refused {len(answer.FailedSOPSequence)} of {len(files)} result instances"
        )


@contextlib.contextmanager
def _answered(doing: str):
    """Turns what requests and dicomweb-client raise into `NotOnServer` or `ServerUnavailable`."""
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        if status == 404:
            raise NotOnServer(
                "the DICOMweb server does not hold an instance with these study, series and instance UIDs"
            ) from None
        raise ServerUnavailable(f"the DICOMweb server answered {status} when {doing}") from None
    except requests.Timeout:
        raise ServerUnavailable(f"the DICOMweb server did not answer in time when {doing}") from None
    except requests.RequestException:
        raise ServerUnavailable(f"the DICOMweb server cannot be reached when {doing}") from None
