"""Takes the OCR and voice-activity ONNX models out of the PyPI wheels that
ship them (no model hub needed): PP-OCRv4 detection and recognition from
rapidocr-onnxruntime, Silero VAD from faster-whisper. Idempotent.

usage: fetch_media_models.py DIR
"""
import pathlib
import subprocess
import sys
import tempfile
import zipfile

WANTED = {
    "rapidocr-onnxruntime==1.4.4": [
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    ],
    "faster-whisper==1.2.1": ["faster_whisper/assets/silero_vad_v6.onnx"],
}


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for req, members in WANTED.items():
        if all((out / pathlib.Path(m).name).exists() for m in members):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                 "--disable-pip-version-check", req, "-d", tmp],
                check=True,
            )
            (wheel,) = pathlib.Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as z:
                for m in members:
                    target = out / pathlib.Path(m).name
                    part = target.with_suffix(".part")
                    part.write_bytes(z.read(m))
                    part.rename(target)
    print(out)


if __name__ == "__main__":
    main()
