"""Real models shipped inside packages on PyPI, fetched once into
`tests/models/.cache` (no other network): Silero VAD v6 from the
`faster-whisper` wheel (MIT), `faster_whisper/assets/silero_vad_v6.onnx`."""

import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
FASTER_WHISPER = "faster-whisper==1.2.1"
SILERO = "faster_whisper/assets/silero_vad_v6.onnx"


def silero_vad():
    """The path of Silero VAD v6, downloaded with pip the first time."""
    out = CACHE / "silero_vad_v6.onnx"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--disable-pip-version-check", FASTER_WHISPER, "-d", str(CACHE)], check=True)
    wheel = next(CACHE.glob("faster_whisper-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        tmp = out.with_suffix(".part")
        tmp.write_bytes(z.read(SILERO))
        tmp.rename(out)
    return out
