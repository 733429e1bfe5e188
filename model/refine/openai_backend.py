"""Optional refiner backend: any OpenAI-compatible chat-completions endpoint.

Asked for JSON only, validated against the same pydantic schema as the rule backend. The
caller (`Refiner`) falls back to the rules on any error, time-out or invalid answer and says
so in the result. Uses only the standard library's HTTP client: no SDK, no extra dependency.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from pydantic import BaseModel, ConfigDict, ValidationError

from model.labels import CHEXPERT_LABELS

from .schema import StructuredFinding

SYSTEM_PROMPT = (
    "You extract chest X-ray findings from radiology text. Answer with JSON only: "
    '{"findings": [{"label": L, "status": "present"|"absent"|"uncertain", "side": "right"|"left"|"bilateral"|null, '
    '"zones": [zero or more of "upper","middle","lower","apical","basal","perihilar"], '
    '"severity": "mild"|"small"|"moderate"|"large"|"severe"|null}]}. '
    f"L is one of: {', '.join(CHEXPERT_LABELS)}. Include only labels the text mentions. "
    "Negated findings are absent; hedged ones (possible, cannot exclude) are uncertain."
)


class BackendError(RuntimeError):
    """The endpoint failed, timed out or answered something that is not valid findings JSON."""


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    findings: list[StructuredFinding]


def chat_findings(text: str, base_url: str, model: str, api_key: str | None, timeout: float) -> list[StructuredFinding]:
    body = {
        "model": model,
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (URL comes from settings)
            payload = json.loads(resp.read().decode("utf-8"))
        content = payload["choices"][0]["message"]["content"]
        return _Answer.model_validate(json.loads(content)).findings
    except urllib.error.HTTPError as exc:
        raise BackendError(f"endpoint answered HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise BackendError(f"endpoint unreachable or timed out ({type(exc).__name__})") from None
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise BackendError(f"endpoint answer is not chat JSON ({type(exc).__name__})") from None
    except ValidationError as exc:
        raise BackendError(f"endpoint JSON does not match the findings schema ({exc.error_count()} errors)") from None
