//! OCR and voice activity with the real models (PP-OCRv4, Silero VAD),
//! taken out of their PyPI wheels by `scripts/test.sh` into the folder
//! `SLUICE_TEST_MODELS` names, on the committed fixtures.

use std::path::PathBuf;

use sluice_inference::ocr::Ocr;
use sluice_inference::vad::{Pcm, Vad, VadSettings};

/// Where `scripts/test.sh` put the models (`SLUICE_TEST_MODELS`, else
/// `tests/models/.media`). Missing models fail the test rather than skip
/// it: a skipped test would read as passed.
fn models() -> PathBuf {
    let dir = std::env::var_os("SLUICE_TEST_MODELS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/models/.media"),
        PathBuf::from,
    );
    assert!(
        dir.join("silero_vad_v6.onnx").exists(),
        "no test models in {}: run scripts/test.sh, or tests/models/fetch_media_models.py DIR \
         with SLUICE_TEST_MODELS=DIR",
        dir.display()
    );
    dir
}

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/media")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn ocr_reads_the_rendered_words_in_order() {
    let dir = models();
    let ocr = Ocr::load(
        &dir.join("ch_PP-OCRv4_det_infer.onnx"),
        &dir.join("ch_PP-OCRv4_rec_infer.onnx"),
        None,
        960,
    )
    .expect("the PP-OCRv4 models load");
    let text = ocr.read(&fixture("ocr_words.png"), &|| false).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert!(
        lines[0].replace(' ', "").contains("INVOICE4711"),
        "{text:?}"
    );
    assert!(
        lines[1]
            .replace(' ', "")
            .to_lowercase()
            .contains("totaldue93eur"),
        "{text:?}"
    );
    // Not an image; a cancelled run.
    assert!(ocr.read(b"GIF89a not really", &|| false).is_err());
    assert!(ocr.read(&fixture("ocr_words.png"), &|| true).is_err());
}

#[test]
fn vad_finds_the_speech_between_the_silences() {
    let dir = models();
    let settings = VadSettings {
        threshold: 0.5,
        min_silence_ms: 500,
        speech_pad_ms: 100,
    };
    let vad = Vad::load(&dir.join("silero_vad_v6.onnx"), settings).expect("Silero VAD loads");
    let wav = fixture("speech.wav");
    let pcm = Pcm::decode(&wav).unwrap();
    let total = pcm.frames() as f64 / pcm.rate as f64;
    let t = vad
        .trim_wav(&wav, &|| false)
        .unwrap()
        .expect("speech is found");
    // 1.5 s of silence on each side: about 3 s fewer, the speech kept.
    let kept = t.speech_ms as f64 / 1000.0;
    assert!(
        (total - kept) > 2.2 && (total - kept) < 3.2,
        "total {total} s, kept {kept} s"
    );
    let back = Pcm::decode(&t.wav).unwrap();
    assert_eq!(back.rate, pcm.rate);
    assert_eq!(
        back.frames() as u64 * 1000 / u64::from(back.rate),
        t.speech_ms
    );
    // Silence alone holds no speech.
    let quiet = Pcm {
        rate: 16_000,
        channels: 1,
        samples: vec![0.0; 32_000],
    };
    let quiet = quiet.encode(&[(0, 32_000)]).unwrap();
    assert!(vad.trim_wav(&quiet, &|| false).unwrap().is_none());
}
