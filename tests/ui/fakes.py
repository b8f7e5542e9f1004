"""Stand-ins for the panel tests: a recorder widget fed from a WAV, a transcriber, an image service.

The recorder stand-in has the real recorder's kernel-side interface (``recording`` and ``error``
traits, ``on_audio`` / ``on_stop`` / ``on_error``) and plays committed speech fixtures in 100 ms
chunks, as the browser would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterator

import ipywidgets as widgets
import traitlets
from PIL import Image

from speech2image_nb.audio import chunk_pcm, decode_audio
from speech2image_nb.errors import ServerUnreachable
from speech2image_nb.images.client import DoneEvent, ImageEvent, ProgressEvent, QueuedEvent
from speech2image_nb.speech.base import TranscriptEvent


class FakeRecorder(widgets.HTML):
    """Kernel side of a recorder: plays PCM to ``on_audio`` callbacks, as the widget does."""

    streams = True
    recording = traitlets.Bool(False).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self) -> None:
        super().__init__("<button class='s2i-fake-recorder'>Record</button>")
        self._audio, self._stop, self._error = [], [], []
        self.observe(self._changed, names="recording")

    def on_audio(self, cb):
        self._audio.append(cb)

    def on_stop(self, cb):
        self._stop.append(cb)

    def on_error(self, cb):
        self._error.append(cb)

    def _changed(self, change):
        if not change["new"]:
            for cb in self._stop:
                cb()

    def play(self, path, *, chunk_ms: int = 100, realtime: bool = False, tail_s: float = 0.0) -> None:
        """Record: send the file's audio in chunks (at speaking pace when ``realtime``), then stop.

        ``tail_s`` seconds of silence follow the speech (a speaker pausing before pressing Stop).
        """
        import time

        import numpy as np

        pcm = decode_audio(path)
        pcm = np.concatenate([pcm, np.zeros(int(tail_s * 16000), dtype=np.int16)])
        self.recording = True
        start = time.monotonic()
        for index, chunk in enumerate(chunk_pcm(pcm, chunk_ms)):
            if realtime:
                time.sleep(max(0.0, start + index * chunk_ms / 1000 - time.monotonic()))
            for cb in self._audio:
                cb(chunk)
        self.recording = False

    def fail(self, exc) -> None:
        """Report a recorder error (what the browser side does on getUserMedia failure)."""
        self.error = str(exc)
        self.recording = False
        for cb in self._error:
            cb(exc)


class ScriptedTranscriber:
    """Emits growing partials while audio arrives, then one final per scripted sentence."""

    name = "scripted"

    def __init__(
        self, sentences=("a red fox sitting in the snow",), *, formatted=False, error=None, error_at_end=None
    ):
        self.sentences = sentences
        self.formatted = formatted
        self.error = error
        self.error_at_end = error_at_end  # raised once the take's audio has ended, before the finals
        self.chunks_seen = 0

    async def stream(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[TranscriptEvent]:
        if self.error is not None:
            raise self.error
        words = " ".join(self.sentences).split()
        async for _chunk in chunks:
            self.chunks_seen += 1
            if self.chunks_seen % 5 == 0:
                yield TranscriptEvent("partial", " ".join(words[: self.chunks_seen // 5]), 0)
        if self.error_at_end is not None:
            raise self.error_at_end
        for turn, sentence in enumerate(self.sentences):
            yield TranscriptEvent("final", sentence, turn)
            if self.formatted:
                yield TranscriptEvent("final", sentence.capitalize() + ".", turn, is_formatted=True)

    async def transcribe(self, audio) -> str:
        await asyncio.sleep(0)
        return " ".join(self.sentences)


class FakeClient:
    """Answers generate_stream with solid-colour images, recording every prompt."""

    def __init__(self, *, delay_s: float = 0.0):
        self.prompts: list[str] = []
        self.delay_s = delay_s

    def health(self):
        return {"success": True, "engine": "fake"}

    def generate_stream(self, text, *, num_images=1, seed=None, **options) -> Iterator[object]:
        import time

        self.prompts.append(text)
        seed = seed if seed is not None else 1234
        yield QueuedEvent(0)
        time.sleep(self.delay_s)
        yield ProgressEvent(1, 2, Image.new("RGB", (32, 32), (90, 90, 90)))
        for index in range(num_images):
            yield ImageEvent(index, Image.new("RGB", (32, 32), ((40 * index) % 255, 100, seed % 255)))
        yield DoneEvent(seed, {"generate_s": 0.0}, "fake")


class FakeImageService:
    """An image service whose server can be 'down' until told otherwise."""

    def __init__(self, client=None, *, down=False):
        self.client = client or FakeClient()
        self.down = down
        self.closed = False

    def describe(self):
        return "fake server"

    def engine_name(self):
        return "fake"

    def open(self, *, timeout_s=10):
        if self.down:
            raise ServerUnreachable(
                "The image server at http://127.0.0.1:9 does not answer: start it, or check S2I_SERVER_URL.",
                url="http://127.0.0.1:9",
            )
        return self.client

    def close(self):
        self.closed = True
