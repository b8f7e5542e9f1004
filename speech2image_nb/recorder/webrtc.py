"""``WebRTCRecorder``: the kernel-side interface of :class:`~.widget.Recorder` over ipywebrtc.

ipywebrtc (the ``webrtc`` extra) records on every Jupyter front end we measured, but it cannot
stream: its ``AudioRecorder`` hands the kernel the whole webm/Opus file only after stop, nothing
before (``benchmarks/RESULTS.md``), so ``on_audio`` is called **once per take, after stop**, with
the decoded PCM. Use :class:`~.widget.Recorder` for live transcription; this adapter keeps ipywebrtc usable
where people already rely on it.

ipywebrtc reports no errors (an insecure page records 0 bytes without a word), so when no
recording arrives within ``result_timeout_s`` after stop, a :class:`RecorderError` saying so is
passed to ``on_error``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..errors import AudioError, RecorderError
from .callbacks import RecorderCallbacks
from .widget import DEFAULT_CONSTRAINTS

__all__ = ["WebRTCRecorder"]

logger = logging.getLogger(__name__)

DEFAULT_RESULT_TIMEOUT_S = 10.0  # s after stop without a recording -> RecorderError

NO_AUDIO_MESSAGE = (
    "ipywebrtc delivered no recording: open Jupyter at http://localhost:8888 or over https, allow "
    "the microphone, or use speech2image_nb.Recorder, which names the exact problem."
)

PCM = npt.NDArray[np.int16]


def _import_ipywebrtc() -> Any:
    try:
        return importlib.import_module("ipywebrtc")
    except ImportError as exc:
        raise ImportError("WebRTCRecorder needs ipywebrtc: pip install 'speech2image_nb[webrtc]'") from exc


class WebRTCRecorder(RecorderCallbacks):
    """Record with ipywebrtc's ``AudioRecorder`` (audio only); the take arrives after stop.

    Parameters
    ----------
    constraints
        ``getUserMedia`` audio constraints merged over the defaults (echo cancellation, noise
        suppression and automatic gain off: with ipywebrtc's defaults on, test speech was
        clipped).
    result_timeout_s
        Seconds to wait after stop for the recording before reporting an error.

    Notes
    -----
    Same kernel-side interface as :class:`~.widget.Recorder` (``recording``, ``on_audio``,
    ``on_stop``, ``on_error``, ``pcm()``, ``elapsed_s``), except that it cannot stream.
    Display it like a widget; ``widget`` is the ipywebrtc ``AudioRecorder``. Its own record
    button does not tell the kernel when recording starts (``recording`` stays ``False`` on the
    kernel side during a clicked take); the take still arrives after stop.
    """

    streams: bool = False  # the whole take arrives once, after stop (RecorderLike)

    def __init__(
        self,
        *,
        constraints: dict[str, Any] | None = None,
        result_timeout_s: float = DEFAULT_RESULT_TIMEOUT_S,
    ) -> None:
        if result_timeout_s <= 0:
            raise ValueError(f"result_timeout_s must be > 0, not {result_timeout_s}")
        webrtc = _import_ipywebrtc()
        audio = {**DEFAULT_CONSTRAINTS, **(constraints or {})}
        self.result_timeout_s = result_timeout_s
        self.sample_rate = SAMPLE_RATE_HZ
        self.stream = webrtc.CameraStream(constraints={"audio": audio, "video": False})
        self.widget = webrtc.AudioRecorder(stream=self.stream, format="webm")
        self._lock = threading.Lock()
        self._pcm: PCM = np.zeros(0, dtype=np.int16)
        self._init_callbacks()
        self._timer: threading.Timer | None = None
        self.widget.observe(self._recording_changed, "recording")
        self.widget.audio.observe(self._audio_changed, "value")

    # --- the Recorder interface ------------------------------------------------------------

    @property
    def recording(self) -> bool:
        """Whether the browser records; set it to start or stop from the kernel."""
        return bool(self.widget.recording)

    @recording.setter
    def recording(self, value: bool) -> None:
        self.widget.recording = bool(value)

    def pcm(self) -> PCM:
        """The last take as a 1-D int16 array (empty until its recording arrived)."""
        with self._lock:
            pcm: PCM = self._pcm.copy()
        return pcm

    @property
    def elapsed_s(self) -> float:
        """Seconds of audio in the last take."""
        with self._lock:
            return len(self._pcm) / self.sample_rate

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        """Close the ipywebrtc widgets."""
        self._cancel_timer()
        self.widget.close()
        self.stream.close()

    # --- handlers ---------------------------------------------------------------------------

    def _recording_changed(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self._cancel_timer()
            with self._lock:
                self._pcm = np.zeros(0, dtype=np.int16)
        else:
            timer = threading.Timer(self.result_timeout_s, self._no_result)
            timer.daemon = True
            self._timer = timer
            timer.start()

    def _audio_changed(self, change: dict[str, Any]) -> None:
        data = bytes(change["new"] or b"")
        if not data:
            return
        self._cancel_timer()
        try:
            pcm = decode_audio(data, SAMPLE_RATE_HZ)
        except AudioError as exc:
            logger.warning("ipywebrtc recording could not be decoded: %s", exc)
            self._report(RecorderError(NO_AUDIO_MESSAGE, detail=str(exc)))
            return
        with self._lock:
            self._pcm = pcm
        self._fire_audio(pcm.astype("<i2").tobytes())  # once, the whole take
        self._fire_stop()

    def _no_result(self) -> None:
        self._timer = None
        logger.warning("ipywebrtc delivered no recording within %.1f s of stop", self.result_timeout_s)
        self._report(RecorderError(NO_AUDIO_MESSAGE))

    def _report(self, error: RecorderError) -> None:
        self._fire_error(error)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
