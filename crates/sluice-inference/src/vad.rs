//! Voice activity detection with Silero VAD (the ONNX model the
//! `faster-whisper` wheel ships): where a recording has speech, so the
//! silence can be cut before it is transcribed.

use std::io::Cursor;
use std::path::Path;

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
    ) -> Result<Vec<f32>, String> {
        let windows = audio.len().div_ceil(WINDOW);
        let mut out = Vec::with_capacity(windows);
        let mut h = vec![0f32; 128];
        let mut c = vec![0f32; 128];
        let sample = |i: usize| audio.get(i).copied().unwrap_or(0.0);
        let mut first = 0;
        while first < windows {
            if cancelled() {
                return Err("cancelled".into());
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
            let mut res = self.model.run_shaped(&inputs)?.into_iter();
            let (Some(p), Some(hn), Some(cn)) = (res.next(), res.next(), res.next()) else {
                return Err("the VAD model gave fewer than 3 outputs".into());
            };
            let (Data::F32(p), Data::F32(hn), Data::F32(cn)) = (p.data, hn.data, cn.data) else {
                return Err("the VAD model's outputs are not f32".into());
            };
            if p.len() != n {
                return Err(format!(
                    "the VAD model gave {} probabilities for {n} windows",
                    p.len()
                ));
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
    ) -> Result<Option<Trimmed>, String> {
        let pcm = Pcm::decode(wav)?;
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
            wav: pcm.encode(&frames)?,
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

/// Linear interpolation to another rate (enough for speech detection;
/// what is transcribed keeps the original samples).
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let n = (x.len() as u64 * u64::from(to) / u64::from(from.max(1))) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..n)
        .map(|i| {
            let pos = i as f64 * step;
            let k = pos as usize;
            let frac = (pos - k as f64) as f32;
            let a = x[k.min(x.len() - 1)];
            let b = x[(k + 1).min(x.len() - 1)];
            a + (b - a) * frac
        })
        .collect()
}

/// A decoded WAV recording: interleaved samples in [-1, 1].
pub struct Pcm {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<f32>,
}

impl Pcm {
    pub fn decode(wav: &[u8]) -> Result<Self, String> {
        let mut r =
            hound::WavReader::new(Cursor::new(wav)).map_err(|e| format!("not a WAV file: {e}"))?;
        let spec = r.spec();
        if spec.channels == 0 || spec.sample_rate == 0 {
            return Err("a WAV file with no channels or rate".into());
        }
        let samples: Result<Vec<f32>, _> = match spec.sample_format {
            hound::SampleFormat::Float => r.samples::<f32>().collect(),
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
                r.samples::<i32>()
                    .map(|s| s.map(|v| v as f32 * scale))
                    .collect()
            }
        };
        Ok(Self {
            rate: spec.sample_rate,
            channels: spec.channels,
            samples: samples.map_err(|e| format!("a broken WAV file: {e}"))?,
        })
    }

    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels)
    }

    pub fn mono(&self) -> Vec<f32> {
        let ch = usize::from(self.channels);
        self.samples
            .chunks_exact(ch)
            .map(|f| f.iter().sum::<f32>() / ch as f32)
            .collect()
    }

    /// The given frame ranges, one after another, as 16-bit PCM WAV.
    pub fn encode(&self, frames: &[(usize, usize)]) -> Result<Vec<u8>, String> {
        let spec = hound::WavSpec {
            channels: self.channels,
            sample_rate: self.rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).map_err(|e| e.to_string())?;
        let ch = usize::from(self.channels);
        for &(a, b) in frames {
            for s in &self.samples[a * ch..b * ch] {
                w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
                    .map_err(|e| e.to_string())?;
            }
        }
        w.finalize().map_err(|e| e.to_string())?;
        Ok(out.into_inner())
    }
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

    #[test]
    fn wav_round_trips_and_cuts_frames() {
        let pcm = Pcm {
            rate: 8000,
            channels: 2,
            samples: (0..16000)
                .map(|i| ((i % 100) as f32 / 100.0) - 0.5)
                .collect(),
        };
        assert_eq!(pcm.frames(), 8000);
        let wav = pcm.encode(&[(0, 100), (200, 300)]).unwrap();
        let back = Pcm::decode(&wav).unwrap();
        assert_eq!((back.rate, back.channels, back.frames()), (8000, 2, 200));
        assert!((back.samples[1] - pcm.samples[1]).abs() < 1e-3);
        assert!((back.samples[200] - pcm.samples[400]).abs() < 1e-3);
        assert!(Pcm::decode(b"RIFF nonsense").is_err());
    }

    #[test]
    fn resampling_keeps_duration() {
        let x: Vec<f32> = (0..48_000).map(|i| i as f32).collect();
        let y = resample(&x, 48_000, 16_000);
        assert_eq!(y.len(), 16_000);
        assert!((y[100] - 300.0).abs() < 1e-3);
    }
}
