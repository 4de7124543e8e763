//! Audio recordings as the processors see them: WAV decoded to samples
//! in [-1, 1], cut and encoded back, and resampled.

use std::io::Cursor;

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
