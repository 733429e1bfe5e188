"""The configured DICOMweb server (`WHATIF_DICOMWEB_URL`), through dicomweb-client: an instance
fetched by its UIDs (WADO-RS) as a job's input, and a job's results stored back (STOW-RS).

Every failure is one of two errors with a sentence safe to show to a client: `NotOnServer` (the
server answered that it does not hold the instance) and `ServerUnavailable` (it cannot be reached,
did not answer in time, refused the credentials, or answered with an error). The sentences name
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


def client(settings):
    """A `DICOMwebClient` for the settings' server (HTTP basic auth when a user is set)."""
    import requests
    from dicomweb_client import DICOMwebClient

    if not settings.dicomweb_url:
        raise ServerUnavailable("no DICOMweb server is configured (WHATIF_DICOMWEB_URL)")
    session = requests.Session()
    if settings.dicomweb_username:
        password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
        session.auth = (settings.dicomweb_username, password)
    dicomweb = DICOMwebClient(settings.dicomweb_url, session=session, timeout=settings.dicomweb_timeout_s)
    # dicomweb-client tries 5 times, waiting 1, 2, 4, 8 s between: 30 s before a server that is down
    # fails the request. Once again after 0.5 s is enough for a blip; a job should not wait longer.
    dicomweb.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=250)
    return dicomweb


def fetch_instance(settings, study: str, series: str, instance: str) -> bytes:
    """The instance as a DICOM file's bytes (WADO-RS), in the transfer syntax the server holds it in."""
    with _answered("fetching the instance"):
        ds = client(settings).retrieve_instance(study, series, instance, media_types=(("application/dicom", "*"),))
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
