"""Upload a recording instead of speaking: checking the file, and the file control itself.

Why an upload: the microphone is out of reach in many places a teacher opens the notebook
(VS Code gives notebook outputs none, an ``http://`` host name is not a secure context, the
browser or the person refuses it, a lecture-hall PC has no microphone, the recorder's JavaScript
did not load). A core ipywidgets ``FileUpload`` renders in every front end, Colab's built-in
widget manager and VS Code included, so the panel always offers one, and the upload goes through
the same pipeline as a take: transcript, prompt, images.

Two parts, so the rules are testable without widgets:

- :func:`read_upload` checks an :class:`UploadedFile` (type by name, size, content, length) and
  decodes it with :func:`speech2image_nb.audio.decode_audio`; every refusal is one sentence.
- :class:`UploadControl` wraps the ``FileUpload``, whose ``value`` differs by version:
  ipywidgets 7 keeps ``{name: {"metadata": {...}, "content": bytes}}`` (filled when ``_counter``
  changes), ipywidgets 8 a tuple of ``{"name", "type", "size", "content", "last_modified"}``.
  :func:`uploaded_files` reads both.

Limits: :data:`MAX_UPLOAD_BYTES` stays under the 10 MiB a Jupyter server's websocket takes in one
message (tornado's default ``websocket_max_message_size``; a larger file closes the connection
before the kernel sees a byte), and :data:`MAX_UPLOAD_S` keeps a transcription to a couple of
minutes (AssemblyAI streams a file at real time).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import numpy.typing as npt

from ..audio import MIN_DURATION_S, SAMPLE_RATE_HZ, decode_audio
from ..errors import AudioDecodeError, AudioError, EmptyAudioError

__all__ = [
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_S",
    "UPLOAD_EXTENSIONS",
    "UPLOAD_HINT",
    "UploadControl",
    "UploadRejected",
    "UploadedFile",
    "read_upload",
    "uploaded_files",
]

logger = logging.getLogger(__name__)

#: File name endings the control offers and :func:`read_upload` takes (what PyAV decodes here).
UPLOAD_EXTENSIONS = (".wav", ".webm", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".flac")
MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # 8 MB: under the 10 MiB one Jupyter websocket message may hold
MAX_UPLOAD_S = 120.0  # s of audio: a spoken prompt is a sentence or two
_FORMATS_TEXT = "wav, mp3, m4a/mp4, ogg, webm or flac"

#: Appended to recorder error lines: the way in that needs no microphone.
UPLOAD_HINT = "Or upload a recording with the Upload button."

PCM = npt.NDArray[np.int16]


class UploadRejected(AudioError):
    """The uploaded file is not one the panel takes: wrong type, too large, or too long."""


@dataclasses.dataclass(frozen=True)
class UploadedFile:
    """One file as the browser sent it."""

    name: str
    content: bytes = dataclasses.field(repr=False)
    mime_type: str = ""

    @property
    def size_bytes(self) -> int:
        """Length of the content in bytes."""
        return len(self.content)


def _size_text(size_bytes: int) -> str:
    """``8.0 MB`` from 0.1 MB up, else ``78 kB`` (1 MB = 2**20 bytes, as browsers count)."""
    if size_bytes >= 2**20 // 10:
        return f"{size_bytes / 2**20:.1f} MB"
    return f"{size_bytes / 1024:.0f} kB"


def read_upload(
    upload: UploadedFile,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_seconds: float = MAX_UPLOAD_S,
    sample_rate: int = SAMPLE_RATE_HZ,
) -> PCM:
    """Check an uploaded recording and decode it to mono int16 PCM at ``sample_rate`` Hz.

    Checks run cheapest first: the name's ending, the size, then the content (decoded, so a text
    file renamed ``.wav`` is caught by what it holds, not by its name) and its length.

    Raises
    ------
    UploadRejected
        Not a recording type the panel takes, larger than ``max_bytes``, or longer than
        ``max_seconds``.
    EmptyAudioError
        0 bytes, or less than :data:`~speech2image_nb.audio.MIN_DURATION_S` of sound.
    AudioDecodeError
        The content is not decodable audio.
    """
    name = PurePath(upload.name).name or "The file"
    if PurePath(name).suffix.lower() not in UPLOAD_EXTENSIONS:
        raise UploadRejected(f"{name} is not a recording the panel takes: upload a {_FORMATS_TEXT} file.")
    if upload.size_bytes == 0:
        raise EmptyAudioError(f"{name} is empty (0 bytes): upload a recording with speech in it.")
    if upload.size_bytes > max_bytes:
        raise UploadRejected(
            f"{name} is too large ({_size_text(upload.size_bytes)}; uploads take up to "
            f"{_size_text(max_bytes).replace('.0 ', ' ')}): upload a shorter recording, or a compressed "
            "one (mp3, m4a, ogg)."
        )
    try:
        pcm = decode_audio(upload.content, sample_rate)
    except EmptyAudioError:
        raise EmptyAudioError(
            f"{name} holds less than {MIN_DURATION_S} s of sound: upload a recording with speech in it."
        ) from None
    except AudioDecodeError as exc:
        raise AudioDecodeError(
            f"{name} is not audio the panel can read: upload a {_FORMATS_TEXT} recording."
        ) from exc
    seconds = pcm.size / sample_rate
    if seconds > max_seconds:
        raise UploadRejected(
            f"{name} is too long ({seconds:.0f} s; uploads take up to {max_seconds:.0f} s): "
            "upload a shorter recording."
        )
    return pcm


def uploaded_files(value: Any) -> list[UploadedFile]:
    """The files in a ``FileUpload.value`` of ipywidgets 8 (a tuple) or 7 (a dict by name)."""
    if isinstance(value, Mapping):  # ipywidgets 7: {name: {"metadata": {...}, "content": bytes}}
        items = [
            (str(meta.get("name", name)), entry.get("content"), str(meta.get("type", "")))
            for name, entry in value.items()
            if isinstance(entry, Mapping)
            for meta in [entry.get("metadata") or {}]
        ]
    else:  # ipywidgets 8: ({"name", "type", "size", "content", "last_modified"}, ...)
        items = [
            (str(entry.get("name", "")), entry.get("content"), str(entry.get("type", "")))
            for entry in value or ()
            if isinstance(entry, Mapping)
        ]
    return [UploadedFile(name, bytes(content or b""), mime) for name, content, mime in items]


class UploadControl:
    """The panel's file control: a core ipywidgets ``FileUpload`` plus a line stating the limits.

    Each chosen file is passed to ``on_file`` (one call per file), then the control is cleared so
    the same file can be chosen again. ``on_file`` runs on the thread that delivers widget
    messages (the kernel's main thread on ipykernel 6, a subshell thread on 7): keep it short.

    Parameters
    ----------
    on_file
        Called with each :class:`UploadedFile`.
    """

    def __init__(self, on_file: Callable[[UploadedFile], object]) -> None:
        import ipywidgets as widgets

        self._on_file = on_file
        self.button = widgets.FileUpload(
            accept=",".join(UPLOAD_EXTENSIONS), multiple=False, description="Upload", icon="upload"
        )
        self.button.add_class("s2i-upload")
        limits = f"up to {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_UPLOAD_S / 60:g} minutes"
        note = f"{_FORMATS_TEXT}; {limits}"
        self.note = widgets.HTML(f'<span class="s2i-upload-note">{note}</span>')
        self.view = widgets.HBox([self.button, self.note], layout=widgets.Layout(align_items="center"))
        self._is_v7 = self.button.has_trait("data")  # ipywidgets 7 syncs ``data``/``metadata``
        self.button.observe(self._changed, names="_counter" if self._is_v7 else "value")

    def _changed(self, _change: Mapping[str, Any]) -> None:
        if self._is_v7:  # read the synced lists, not ``value``: it is rebuilt by another observer
            pairs = zip(self.button.metadata, self.button.data, strict=False)
            value: Any = {str(m.get("name", "")): {"metadata": m, "content": raw} for m, raw in pairs}
        else:
            value = self.button.value
        files = uploaded_files(value)
        if not files:  # the clearing below comes back here once
            return
        self._clear()
        for upload in files:
            try:
                self._on_file(upload)
            except Exception:
                logger.exception("upload callback failed for %s", upload.name)

    def _clear(self) -> None:
        """Forget the files (memory) and let the same file be chosen again."""
        if self._is_v7:
            with self.button.hold_sync():
                self.button.metadata = []
                self.button.data = []
                self.button._counter = 0  # the button's "(n)" count
        else:
            self.button.value = ()
