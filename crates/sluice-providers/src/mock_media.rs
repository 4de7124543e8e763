//! The mock's answers on the media endpoints: speech as a real WAV file
//! streamed in frames, transcripts in every `response_format`, and images
//! as small PNGs whose colour comes from the prompt. The same request always
//! gets the same answer.

use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderValue;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::media::{self, Media};
use sluice_core::request::Usage;
use sluice_core::{ErrorKind, GatewayError};

use crate::BoxBody;
use crate::mock::{base64_encode, fnv1a, json_response, now_secs, sse};

type Answer = (http::Response<BoxBody>, Usage);

/// The mock's answer to a media request.
pub fn answer(
    m: Media,
    model: &str,
    body: &[u8],
    content_type: Option<&HeaderValue>,
) -> Result<Answer, GatewayError> {
    match m {
        Media::Speech => speech(body),
        Media::Transcription | Media::Translation => {
            transcript(m, model, &Form::read(body, content_type)?)
        }
        Media::ImageGeneration => {
            let req: ImageIn = json_in(body)?;
            images(&req.prompt, req.n, req.response_format.as_deref(), None)
        }
        Media::ImageEdit => {
            let form = Form::read(body, content_type)?;
            let prompt = form.text("prompt").unwrap_or_default();
            let n = form.text("n").and_then(|n| n.trim().parse().ok());
            let image = form.files.first().map(|f| f.1);
            images(&prompt, n, form.text("response_format").as_deref(), image)
        }
        Media::Moderation => crate::mock_text::moderation(model, body),
        Media::Rerank => crate::mock_text::rerank(model, body),
    }
}

pub(crate) fn json_in<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::new(ErrorKind::InvalidRequest, format!("invalid request: {e}")))
}

/// A form upload's text fields and files (name and size).
struct Form {
    fields: Vec<(String, String)>,
    files: Vec<(String, usize)>,
}

impl Form {
    fn read(body: &[u8], content_type: Option<&HeaderValue>) -> Result<Self, GatewayError> {
        let boundary = content_type
            .and_then(|v| v.to_str().ok())
            .and_then(media::boundary)
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::UnsupportedMediaType,
                    "expected a multipart/form-data upload",
                )
            })?;
        let mut form = Self {
            fields: Vec::new(),
            files: Vec::new(),
        };
        for p in media::parts(body, boundary)? {
            match &p.filename {
                Some(f) => form.files.push((f.to_string(), p.span.len())),
                None => form.fields.push((
                    p.name.to_string(),
                    String::from_utf8_lossy(&body[p.span]).into_owned(),
                )),
            }
        }
        Ok(form)
    }

    fn text(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Deserialize)]
struct SpeechIn {
    input: String,
    voice: Option<Value>,
    response_format: Option<String>,
    speed: Option<f64>,
}

const RATE: u32 = 24_000;

/// Speech: a WAV (or raw PCM) tone as long as the text would take to say,
/// its pitch from the voice, sent in 16 KiB frames.
fn speech(body: &[u8]) -> Result<Answer, GatewayError> {
    let req: SpeechIn = json_in(body)?;
    if req.input.is_empty() || req.input.len() > 4096 {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "'input' must be 1 to 4096 characters",
        )
        .with_param("input"));
    }
    let speed = req.speed.unwrap_or(1.0);
    if !(0.25..=4.0).contains(&speed) {
        return Err(
            GatewayError::new(ErrorKind::InvalidRequest, "'speed' must be 0.25 to 4.0")
                .with_param("speed"),
        );
    }
    let words = req.input.split_whitespace().count().max(1) as f64;
    let seconds = (words * 0.3 / speed).clamp(0.2, 60.0);
    let voice = req.voice.map(|v| v.to_string()).unwrap_or_default();
    let pitch = 180.0 + (fnv1a(voice.as_bytes()) % 200) as f64;
    let samples = (seconds * f64::from(RATE)) as usize;
    let pcm = req.response_format.as_deref() == Some("pcm");
    let mut audio = Vec::with_capacity(44 + samples * 2);
    if !pcm {
        wav_header(&mut audio, samples);
    }
    for i in 0..samples {
        let t = i as f64 / f64::from(RATE);
        let s = (t * pitch * std::f64::consts::TAU).sin() * 3000.0;
        audio.extend_from_slice(&(s as i16).to_le_bytes());
    }
    let content_type = if pcm { "audio/pcm" } else { "audio/wav" };
    let audio = Bytes::from(audio);
    let frames: Vec<Bytes> = (0..audio.len())
        .step_by(16 * 1024)
        .map(|i| audio.slice(i..(i + 16 * 1024).min(audio.len())))
        .collect();
    let stream =
        futures_util::stream::iter(frames).map(|b| Ok::<_, crate::BodyError>(Frame::data(b)));
    let resp = http::Response::builder()
        .header(CONTENT_TYPE, content_type)
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("static headers are valid");
    let usage = Usage {
        prompt_tokens: words as u64,
        completion_tokens: 0,
    };
    Ok((resp, usage))
}

fn wav_header(out: &mut Vec<u8>, samples: usize) {
    let data = (samples * 2) as u32;
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
}

/// A transcript (or translation) naming what was uploaded, in the format
/// asked for; streamed as transcript events when `stream` is true.
fn transcript(m: Media, model: &str, form: &Form) -> Result<Answer, GatewayError> {
    let Some((name, size)) = form.files.first() else {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "missing required form field 'file'",
        )
        .with_param("file"));
    };
    let what = if m == Media::Translation {
        "translation"
    } else {
        "transcription"
    };
    let text = format!("This is a mock {what} of {name} ({size} bytes) by {model}.");
    let words = text.split_whitespace().count() as u64;
    let seconds = (*size as f64 / f64::from(RATE * 2)).max(0.1);
    let usage = Usage {
        prompt_tokens: (seconds * 10.0).ceil() as u64,
        completion_tokens: words,
    };
    let usage_json = json!({
        "type": "tokens",
        "input_tokens": usage.prompt_tokens,
        "output_tokens": words,
        "total_tokens": usage.prompt_tokens + words,
    });
    if form.text("stream").as_deref() == Some("true") {
        let mut events: Vec<Bytes> = text
            .split_inclusive(' ')
            .map(|w| sse(&json!({"type": "transcript.text.delta", "delta": w})))
            .collect();
        events.push(sse(
            &json!({"type": "transcript.text.done", "text": text, "usage": usage_json}),
        ));
        let stream =
            futures_util::stream::iter(events).map(|b| Ok::<_, crate::BodyError>(Frame::data(b)));
        let resp = http::Response::builder()
            .header(CONTENT_TYPE, "text/event-stream")
            .body(StreamBody::new(stream).boxed_unsync())
            .expect("static headers are valid");
        return Ok((resp, usage));
    }
    let srt_time = |s: f64, sep: char| {
        let ms = (s * 1000.0) as u64;
        format!(
            "{:02}:{:02}:{:02}{sep}{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    };
    let plain = |body: String, ct: &'static str| {
        http::Response::builder()
            .header(CONTENT_TYPE, ct)
            .body(
                Full::new(Bytes::from(body))
                    .map_err(|n| match n {})
                    .boxed_unsync(),
            )
            .expect("static headers are valid")
    };
    let resp = match form.text("response_format").as_deref().unwrap_or("json") {
        "json" => json_response(&json!({"text": text, "usage": usage_json})),
        "text" => plain(format!("{text}\n"), "text/plain; charset=utf-8"),
        "srt" => plain(
            format!(
                "1\n{} --> {}\n{text}\n\n",
                srt_time(0.0, ','),
                srt_time(seconds, ',')
            ),
            "text/plain; charset=utf-8",
        ),
        "vtt" => plain(
            format!(
                "WEBVTT\n\n{} --> {}\n{text}\n\n",
                srt_time(0.0, '.'),
                srt_time(seconds, '.')
            ),
            "text/vtt; charset=utf-8",
        ),
        "verbose_json" => json_response(&verbose(m, form, &text, seconds)),
        other => {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                format!("unknown response_format '{other}' (json, text, srt, verbose_json or vtt)"),
            )
            .with_param("response_format"));
        }
    };
    Ok((resp, usage))
}

fn verbose(m: Media, form: &Form, text: &str, seconds: f64) -> Value {
    let mut v = json!({
        "task": if m == Media::Translation { "translate" } else { "transcribe" },
        "language": form.text("language").unwrap_or_else(|| "english".into()),
        "duration": seconds,
        "text": text,
        "segments": [{
            "id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text,
            "tokens": [], "temperature": 0.0, "avg_logprob": -0.1,
            "compression_ratio": 1.0, "no_speech_prob": 0.0,
        }],
    });
    if form.all("timestamp_granularities[]").any(|g| g == "word") {
        let words: Vec<&str> = text.split_whitespace().collect();
        let step = seconds / words.len().max(1) as f64;
        v["words"] = words
            .iter()
            .enumerate()
            .map(
                |(i, w)| json!({"word": w, "start": i as f64 * step, "end": (i + 1) as f64 * step}),
            )
            .collect();
    }
    v
}

#[derive(Deserialize)]
struct ImageIn {
    prompt: String,
    n: Option<u32>,
    response_format: Option<String>,
}

/// `n` images, each an 8×8 PNG coloured by the prompt (and, for an edit,
/// the size of the image edited).
fn images(
    prompt: &str,
    n: Option<u32>,
    format: Option<&str>,
    edited: Option<usize>,
) -> Result<Answer, GatewayError> {
    let n = n.unwrap_or(1);
    if !(1..=10).contains(&n) {
        return Err(
            GatewayError::new(ErrorKind::InvalidRequest, "'n' must be 1 to 10").with_param("n"),
        );
    }
    let url = match format {
        None | Some("b64_json") => false,
        Some("url") => true,
        Some(other) => {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                format!("unknown response_format '{other}' (url or b64_json)"),
            )
            .with_param("response_format"));
        }
    };
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let seed = fnv1a(format!("{prompt}\u{0}{i}\u{0}{edited:?}").as_bytes());
            let b64 = base64_encode(&png(
                8,
                8,
                seed.to_le_bytes()[..3].try_into().unwrap_or([0; 3]),
            ));
            if url {
                json!({"url": format!("data:image/png;base64,{b64}"), "revised_prompt": prompt})
            } else {
                json!({"b64_json": b64, "revised_prompt": prompt})
            }
        })
        .collect();
    let input = prompt.split_whitespace().count() as u64;
    let output = u64::from(n) * 64;
    let body = json!({
        "created": now_secs(),
        "data": data,
        "usage": {
            "input_tokens": input, "output_tokens": output, "total_tokens": input + output,
            "input_tokens_details": {"text_tokens": input, "image_tokens": 0},
        },
    });
    let usage = Usage {
        prompt_tokens: input,
        completion_tokens: output,
    };
    Ok((json_response(&body), usage))
}

/// A solid-colour RGB PNG (stored, uncompressed deflate).
fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    // Each row: filter type 0, then the pixels.
    let row: Vec<u8> = std::iter::once(0)
        .chain(rgb.iter().copied().cycle().take(w as usize * 3))
        .collect();
    let raw = row.repeat(h as usize);
    let mut z = vec![0x78, 0x01, 1];
    z.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    z.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    z.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(&b"IHDR"[..], &ihdr[..]), (b"IDAT", &z), (b"IEND", &[])] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_is_well_formed() {
        let p = png(8, 8, [1, 2, 3]);
        assert!(p.starts_with(b"\x89PNG\r\n\x1a\n"));
        // IEND's CRC is fixed by the format.
        assert!(p.ends_with(&[0xAE, 0x42, 0x60, 0x82]));
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn wav_header_states_the_length() {
        let mut v = Vec::new();
        wav_header(&mut v, 100);
        assert_eq!(v.len(), 44);
        assert_eq!(&v[40..44], &200u32.to_le_bytes());
    }
}
