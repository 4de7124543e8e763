//! Voice activity detection with Silero VAD (the ONNX model the
//! `faster-whisper` wheel ships): where a recording has speech, so the
//! silence can be cut before it is transcribed.

use std::path::Path;

pub use crate::audio::{Pcm, resample};
use crate::engine::{self, Data, Model, Shaped};

/// The model's rate, window and the context each window carries from the
/// one before.
const RATE: u32 = 16_000;
const WINDOW: usize = 512;
const CONTEXT: usize = 64;
/// Windows per run (the model's sequence), carrying its state across.
const ROWS: usize = 4096;
/// Speech shorter than this is dropped.
const MIN_SPEECH_MS: u32 = 250;

#[derive(Debug, Clone, Copy)]
pub struct VadSettings {
    pub threshold: f32,
    pub min_silence_ms: u32,
    pub speech_pad_ms: u32,
}

pub struct Vad {
    model: Model,
    settings: VadSettings,
}

impl std::fmt::Debug for Vad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vad")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Why a recording was not trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VadError {
    /// The bytes are not a WAV recording this build decodes.
    Audio(String),
    Engine(String),
    Cancelled,
}

impl std::fmt::Display for VadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Audio(e) | Self::Engine(e) => f.write_str(e),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// A recording with its silence cut.
#[derive(Debug)]
pub struct Trimmed {
    /// 16-bit PCM WAV at the recording's rate and channels.
    pub wav: Vec<u8>,
    pub speech_ms: u64,
    pub total_ms: u64,
}

impl Vad {
    pub fn load(path: &Path, settings: VadSettings) -> Result<Self, String> {
        let model = engine::load(path)?;
        let fits = model.inputs.len() == 3
            && model.inputs[0].dims.last() == Some(&engine::Dim::Fixed(WINDOW + CONTEXT));
        if !fits {
            return Err(format!(
                "not a Silero VAD model with [windows, {}], h and c inputs: {:?}",
                WINDOW + CONTEXT,
                model.inputs
            ));
        }
        Ok(Self { model, settings })
    }

    /// The speech probability of each 32 ms window of 16 kHz mono audio.
    pub fn probabilities(
        &self,
        audio: &[f32],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>, VadError> {
        let windows = audio.len().div_ceil(WINDOW);
        let mut out = Vec::with_capacity(windows);
        let mut h = vec![0f32; 128];
        let mut c = vec![0f32; 128];
        let sample = |i: usize| audio.get(i).copied().unwrap_or(0.0);
        let mut first = 0;
        while first < windows {
            if cancelled() {
                return Err(VadError::Cancelled);
            }
            let n = ROWS.min(windows - first);
            let mut rows = Vec::with_capacity(n * (WINDOW + CONTEXT));
            for w in first..first + n {
                let start = w * WINDOW;
                for i in 0..CONTEXT {
                    rows.push(if start >= CONTEXT {
                        sample(start - CONTEXT + i)
                    } else {
                        0.0
                    });
                }
                rows.extend((start..start + WINDOW).map(sample));
            }
            let inputs = [
                Shaped {
                    shape: vec![n, WINDOW + CONTEXT],
                    data: Data::F32(rows),
                },
                Shaped {
                    shape: vec![1, 1, 128],
                    data: Data::F32(h),
                },
                Shaped {
                    shape: vec![1, 1, 128],
                    data: Data::F32(c),
                },
            ];
            let mut res = self
                .model
                .run_shaped(&inputs)
                .map_err(VadError::Engine)?
                .into_iter();
            let (Some(p), Some(hn), Some(cn)) = (res.next(), res.next(), res.next()) else {
                return Err(VadError::Engine(
                    "the VAD model gave fewer than 3 outputs".into(),
                ));
            };
            let (Data::F32(p), Data::F32(hn), Data::F32(cn)) = (p.data, hn.data, cn.data) else {
                return Err(VadError::Engine(
                    "the VAD model's outputs are not f32".into(),
                ));
            };
            if p.len() != n {
                return Err(VadError::Engine(format!(
                    "the VAD model gave {} probabilities for {n} windows",
                    p.len()
                )));
            }
            out.extend(p);
            (h, c) = (hn, cn);
            first += n;
        }
        Ok(out)
    }

    /// The WAV recording with its silence cut; `None` when it holds no
    /// speech at all.
    pub fn trim_wav(
        &self,
        wav: &[u8],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Trimmed>, VadError> {
        let pcm = Pcm::decode(wav).map_err(VadError::Audio)?;
        let mono16k = resample(&pcm.mono(), pcm.rate, RATE);
        let probs = self.probabilities(&mono16k, cancelled)?;
        let spans = speech(&probs, self.settings);
        let total_ms = pcm.frames() as u64 * 1000 / u64::from(pcm.rate.max(1));
        if spans.is_empty() {
            return Ok(None);
        }
        // Windows → frames at the recording's own rate.
        let to_frame =
            |w: usize| ((w * WINDOW) as u64 * u64::from(pcm.rate) / u64::from(RATE)) as usize;
        let frames: Vec<(usize, usize)> = spans
            .iter()
            .map(|&(a, b)| (to_frame(a), to_frame(b).min(pcm.frames())))
            .collect();
        let kept: usize = frames.iter().map(|(a, b)| b - a).sum();
        Ok(Some(Trimmed {
            wav: pcm.encode(&frames).map_err(VadError::Engine)?,
            speech_ms: kept as u64 * 1000 / u64::from(pcm.rate.max(1)),
            total_ms,
        }))
    }
}

/// Speech as `[start, end)` window ranges: it starts at a window at or
/// above the threshold and ends after `min_silence_ms` below
/// `threshold - 0.15`; shorter than 250 ms is dropped; each is padded by
/// `speech_pad_ms` and overlapping ones merged.
pub fn speech(probs: &[f32], s: VadSettings) -> Vec<(usize, usize)> {
    let ms_windows = |ms: u32| (ms as usize * RATE as usize / 1000).div_ceil(WINDOW);
    let (min_silence, min_speech, pad) = (
        ms_windows(s.min_silence_ms),
        ms_windows(MIN_SPEECH_MS),
        ms_windows(s.speech_pad_ms),
    );
    let off = (s.threshold - 0.15).max(0.01);
    let mut raw = Vec::new();
    let mut start: Option<usize> = None;
    let mut quiet_since: Option<usize> = None;
    for (i, &p) in probs.iter().enumerate() {
        match start {
            None if p >= s.threshold => start = Some(i),
            None => {}
            Some(_) if p >= s.threshold => quiet_since = None,
            Some(st) if p < off => {
                let q = *quiet_since.get_or_insert(i);
                if i + 1 - q >= min_silence {
                    raw.push((st, q));
                    start = None;
                    quiet_since = None;
                }
            }
            Some(_) => {}
        }
    }
    if let Some(st) = start {
        raw.push((st, probs.len()));
    }
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (a, b) in raw.into_iter().filter(|(a, b)| b - a >= min_speech) {
        let (a, b) = (a.saturating_sub(pad), (b + pad).min(probs.len()));
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: VadSettings = VadSettings {
        threshold: 0.5,
        min_silence_ms: 100,
        speech_pad_ms: 0,
    };

    #[test]
    fn speech_spans_need_enough_silence_to_end_and_enough_speech_to_count() {
        // 31.25 windows per second: 100 ms of silence is 4 windows, 250 ms
        // of speech 8.
        let mut p = vec![0.0f32; 60];
        p[5..20].fill(0.9); // speech
        p[21..23].fill(0.9); // after a 1-window dip: the same span
        p[40..44].fill(0.9); // too short: dropped
        assert_eq!(speech(&p, S), vec![(5, 23)]);
        // Speech to the end.
        let mut p = vec![0.0f32; 30];
        p[10..].fill(0.8);
        assert_eq!(speech(&p, S), vec![(10, 30)]);
        assert!(speech(&[0.1; 100], S).is_empty());
    }

    #[test]
    fn padding_merges_close_spans() {
        let mut p = vec![0.0f32; 80];
        p[10..20].fill(0.9);
        p[26..36].fill(0.9);
        let padded = VadSettings {
            speech_pad_ms: 100,
            ..S
        };
        assert_eq!(speech(&p, padded), vec![(6, 40)]);
    }
}
