"""Small but real media files the sandbox serves as task results: a PNG, a WAV and an MP4.

The image and the tone are derived from the prompt, so different prompts give different files; the
video is one short H.264 clip shipped with the package.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import wave
import zlib
from functools import cache
from importlib.resources import files

MIME_TYPES = {"image": "image/png", "music": "audio/wav", "video": "video/mp4"}
EXTENSIONS = {"image/png": "png", "audio/wav": "wav", "video/mp4": "mp4"}


def _seed(prompt: str) -> bytes:
    return hashlib.sha256(prompt.encode()).digest()


def png(prompt: str, size: int = 64) -> bytes:
    """A size x size gradient whose colours come from the prompt."""
    r, g, b = _seed(prompt)[:3]
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter: none
        for x in range(size):
            rows += bytes(((r + x * 2) % 256, (g + y * 2) % 256, (b + x + y) % 256))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def wav(prompt: str, seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A mono 16-bit tone whose pitch comes from the prompt."""
    pitch = 220 + _seed(prompt)[0] * 2
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * pitch * i / rate))) for i in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


@cache
def mp4() -> bytes:
    return files(__package__).joinpath("media/sample.mp4").read_bytes()


def render(modality: str, prompt: str) -> bytes:
    if modality == "image":
        return png(prompt)
    if modality == "music":
        return wav(prompt)
    return mp4()
