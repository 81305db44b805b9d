"""What every request passes before it reaches a route: the Host allow-list, and a body read only once its
declared length is within the limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

from clreg.serving.errors import BadHost, BadRequest, LengthRequired, PayloadTooLarge

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def host_allowed(header: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a Host header names one of the allowed hosts (any port); '*' allows all."""
    if "*" in allowed:
        return True
    if not header:
        return False
    host = header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        name = host.split("]", 1)[0] + "]"
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in allowed


def check_host(header: str | None, allowed: tuple[str, ...]) -> None:
    if not host_allowed(header, allowed):
        raise BadHost(f"Host {header!r} is not served here; allowed: {', '.join(allowed)} "
                      "(CLREG_SERVE__ALLOWED_HOSTS)")


async def read_body(content_length: str | None, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body, refused before it is read when it declares more than `limit` bytes.

    A body without Content-Length (chunked) is refused with 411: Ray Serve's proxy forwards such a body to
    the replica in large batches of chunks, so a limit checked while it streams still lets the replica's
    memory grow by several times the limit (measured: 206 MB for a 72 MiB chunked upload). With a declared
    length, HTTP framing bounds the body; the stream is still counted in case a client lies.
    """
    try:
        declared = int(content_length) if content_length is not None else None
    except ValueError:
        declared = -1
    if declared is None:
        raise LengthRequired("send the body with a Content-Length header (chunked uploads are not taken)")
    if declared < 0:
        raise BadRequest(f"Content-Length {content_length!r:.40} is not a length")
    if declared > limit:
        raise PayloadTooLarge(f"the body declares {declared:,} bytes; the limit is {limit:,}")
    parts, size = [], 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body passed the limit of {limit:,} bytes")
    return b"".join(parts)
