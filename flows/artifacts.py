"""PNG artifacts that the Prefect UI shows.

Prefect's image artifact (`create_image_artifact(image_url=...)`) stores only a URL, which the reader's browser
then loads: a PNG on the worker's disk or in a private bucket has none it can reach. So `png_artifact` inlines
the bytes as a `data:image/png;base64,...` URI in a markdown artifact. Checked in headless Chromium against
Prefect 3.8.8's server: both UIs (v2, the default, under /v2, and v1) render it as an image on the artifact page
(docs/prefect-artifact.png); the run's Artifacts tab lists it as a card that links there. An image artifact
given the same data URI also shows the image, but prints the whole base64 string under it as its "Image URL".
The bytes are stored in the server's database with the artifact: keep PNGs small (MAX_INLINE_BYTES).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from pipeline.redaction import redact

MAX_INLINE_BYTES = 200_000
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that displays a PNG inline (alt text without brackets, which would end the image syntax)."""
    if not png.startswith(_PNG_MAGIC):
        raise ValueError("not a PNG (the bytes do not start with the PNG signature)")
    alt = alt.replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def png_artifact(png: bytes, key: str, description: str | None = None, *, link: str | None = None) -> UUID:
    """Attach a PNG to the current flow or task run so the Prefect UI displays it.

    `key` (lowercase letters, digits, dashes) groups the versions of an artifact across runs. A PNG over
    MAX_INLINE_BYTES is not inlined: with `link` (where it is stored, e.g. an object-store URL the readers can
    open) a link artifact points there instead; without it, ValueError.
    """
    if len(png) > MAX_INLINE_BYTES:
        if link is None:
            raise ValueError(f"PNG of {len(png)} bytes is over {MAX_INLINE_BYTES} to inline in an artifact: "
                             "make it smaller (dpi, size) or store it and pass link=")
        return create_link_artifact(link, link_text=description or key, key=key, description=description)
    return create_markdown_artifact(png_markdown(png, description or key), key=key, description=description)


def after_the_fact(what: str, make: Callable[[], object]) -> None:
    """Make the artifacts of work already done (a version published, an alias moved): a failure is logged, not
    raised, since failing the run would invite a retry of work that stands."""
    try:
        make()
    except Exception as exc:  # whatever Prefect's client or the chart raises
        get_run_logger().warning("%s: its artifacts were not made: %s", what, redact(str(exc)))
