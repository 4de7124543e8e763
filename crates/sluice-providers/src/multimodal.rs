//! Multimodal parts of an OpenAI chat request (every client format is in
//! that shape by the time parts are converted): finding the image and
//! audio parts, putting text in their place, and the wire formats of the
//! requests that convert them (a transcription upload, a vision chat) and
//! of their answers.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use sluice_core::config::{Modalities, Modality};
use sluice_core::{ErrorKind, GatewayError};

/// An image or audio part of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Where it is: the message's index and the part's within its content.
    pub message: usize,
    pub index: usize,
    pub modality: Modality,
    /// Its number among the request's parts of that modality, from 1.
    pub ordinal: usize,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An image by URL (`https://…`) or data URI.
    ImageUrl(String),
    /// Audio, base64, with its format (`wav`, `mp3`).
    Audio { data: String, format: String },
}

impl Part {
    /// `image 2`, `audio 1`: how errors, notes and metrics name it.
    pub fn name(&self) -> String {
        format!("{} {}", self.modality.as_str(), self.ordinal)
    }
}

/// Whether the body may hold parts other than text that a model taking
/// `native` does not (a cheap scan first: most requests have none, or
/// only parts their model takes, and are not parsed).
pub fn may_have_media(body: &[u8], native: Modalities) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Built once: making a finder (~500 instructions) cost as much as
    // running it over a usual request.
    static IMAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"image_url"));
    static AUDIO: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"input_audio"));
    (!native.image && IMAGE.find(body).is_some()) || (!native.audio && AUDIO.find(body).is_some())
}

/// The request, parsed, and its image and audio parts in order.
pub fn parts(body: &[u8]) -> Result<(Value, Vec<Part>), GatewayError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::new(ErrorKind::InvalidJson, format!("invalid JSON: {e}")))?;
    let mut out = Vec::new();
    let (mut images, mut audios) = (0, 0);
    let messages = v["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (m, msg) in messages.iter().enumerate() {
        let Some(content) = msg["content"].as_array() else {
            continue;
        };
        for (i, p) in content.iter().enumerate() {
            let at = |what: &str| format!("messages[{m}].content[{i}]{what}");
            let source = match p["type"].as_str() {
                Some("image_url") => {
                    // `image_url` is an object with `url`, or (older
                    // clients) the URL itself.
                    let url = p["image_url"]["url"]
                        .as_str()
                        .or_else(|| p["image_url"].as_str())
                        .ok_or_else(|| {
                            invalid(at(".image_url.url"), "an image_url part needs a url")
                        })?;
                    images += 1;
                    (Modality::Image, images, Source::ImageUrl(url.to_owned()))
                }
                Some("input_audio") => {
                    let a = &p["input_audio"];
                    let (Some(data), Some(format)) = (a["data"].as_str(), a["format"].as_str())
                    else {
                        return Err(invalid(
                            at(".input_audio"),
                            "an input_audio part needs data (base64) and format",
                        ));
                    };
                    audios += 1;
                    let source = Source::Audio {
                        data: data.to_owned(),
                        format: format.to_ascii_lowercase(),
                    };
                    (Modality::Audio, audios, source)
                }
                _ => continue,
            };
            out.push(Part {
                message: m,
                index: i,
                modality: source.0,
                ordinal: source.1,
                source: source.2,
            });
        }
    }
    Ok((v, out))
}

fn invalid(at: String, message: &str) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, format!("{at}: {message}")).with_param("messages")
}

/// The request with each listed part replaced by a text part (`Some`) or
/// taken out (`None`), the others left as they were.
pub fn replace(mut v: Value, with: Vec<(&Part, Option<String>)>) -> Bytes {
    // Removals shift later indices: go from the last part back.
    let mut with = with;
    with.sort_by_key(|(p, _)| std::cmp::Reverse((p.message, p.index)));
    for (p, text) in with {
        let Some(content) = v["messages"][p.message]["content"].as_array_mut() else {
            continue;
        };
        match text {
            Some(t) if p.index < content.len() => {
                content[p.index] = json!({"type": "text", "text": t});
            }
            None if p.index < content.len() => {
                content.remove(p.index);
            }
            _ => {}
        }
    }
    Bytes::from(serde_json::to_vec(&v).expect("serializing a Value cannot fail"))
}

/// A `data:` URI's media type and decoded bytes; `None` when the URL is
/// not a data URI.
pub fn data_uri(url: &str) -> Option<Result<(String, Vec<u8>), String>> {
    let rest = url.strip_prefix("data:")?;
    let Some((meta, data)) = rest.split_once(',') else {
        return Some(Err("a data URI without a comma".into()));
    };
    let Some(mime) = meta.strip_suffix(";base64") else {
        return Some(Err("only base64 data URIs are taken".into()));
    };
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(|b| (mime.to_ascii_lowercase(), b))
            .map_err(|e| format!("the data URI is not valid base64: {e}")),
    )
}

/// Base64 audio, decoded.
pub fn audio_bytes(data: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("input_audio data is not valid base64: {e}"))
}

/// A `/v1/audio/transcriptions` upload of `audio` for `model`: its
/// content type (with the boundary) and body.
pub fn transcription_form(audio: &[u8], format: &str, model: &str) -> (String, Bytes) {
    let boundary = format!("sluice-{:016x}", rand::random::<u64>());
    let mime = match format {
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        other => {
            return transcription_form_as(
                audio,
                other,
                "application/octet-stream",
                model,
                boundary,
            );
        }
    };
    transcription_form_as(audio, format, mime, model, boundary)
}

fn transcription_form_as(
    audio: &[u8],
    ext: &str,
    mime: &str,
    model: &str,
    boundary: String,
) -> (String, Bytes) {
    let mut body = Vec::with_capacity(audio.len() + 512);
    let field = |body: &mut Vec<u8>, name: &str, value: &str| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    };
    field(&mut body, "model", model);
    field(&mut body, "response_format", "json");
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"audio.{ext}\"\r\nContent-Type: {mime}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(body),
    )
}

/// A chat request asking `model` about one image.
pub fn vision_request(model: &str, prompt: &str, url: &str) -> Bytes {
    let v = json!({
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": url}},
        ]}],
    });
    Bytes::from(serde_json::to_vec(&v).expect("serializing a Value cannot fail"))
}

/// The text of a chat completion (its first choice).
pub fn chat_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned)
}

/// The text of a transcription (`json` format), or the body itself when
/// it is plain text.
pub fn transcription_text(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => v["text"].as_str().map(str::to_owned),
        Err(_) => std::str::from_utf8(body).ok().map(|s| s.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = r#"{"model":"m","messages":[
        {"role":"system","content":"be brief"},
        {"role":"user","content":[
            {"type":"text","text":"what is this?"},
            {"type":"image_url","image_url":{"url":"https://x/a.png"}},
            {"type":"input_audio","input_audio":{"data":"UklGRg==","format":"WAV"}},
            {"type":"image_url","image_url":"data:image/png;base64,iVBORw0KGgo="}]}]}"#;

    #[test]
    fn parts_are_found_in_order_and_numbered_per_modality() {
        let text_only = Modalities {
            image: false,
            audio: false,
        };
        assert!(may_have_media(REQ.as_bytes(), text_only));
        assert!(may_have_media(REQ.as_bytes(), Modalities::default()));
        let all = Modalities {
            image: true,
            audio: true,
        };
        assert!(!may_have_media(REQ.as_bytes(), all));
        let image_only =
            br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":"x"}]}]}"#;
        assert!(!may_have_media(image_only, Modalities::default()));
        let plain = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        assert!(!may_have_media(plain, text_only));
        let (_, p) = parts(REQ.as_bytes()).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].message, p[0].index, p[0].name()),
            (1, 1, "image 1".into())
        );
        assert_eq!(p[1].name(), "audio 1");
        assert_eq!(
            p[1].source,
            Source::Audio {
                data: "UklGRg==".into(),
                format: "wav".into()
            }
        );
        assert_eq!(p[2].name(), "image 2");
        assert_eq!(
            p[2].source,
            Source::ImageUrl("data:image/png;base64,iVBORw0KGgo=".into())
        );
        let bad = br#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"x"}}]}]}"#;
        let e = parts(bad).unwrap_err();
        assert_eq!(e.param, Some("messages"));
        assert!(
            e.message
                .starts_with("messages[0].content[0].input_audio: "),
            "{}",
            e.message
        );
    }

    #[test]
    fn replaced_parts_keep_their_place_and_removed_ones_go() {
        let (v, p) = parts(REQ.as_bytes()).unwrap();
        let out = replace(
            v,
            vec![
                (&p[0], Some("[image 1: a cat]".into())),
                (&p[1], None),
                (&p[2], Some("[image 2: a dog]".into())),
            ],
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        let c = v["messages"][1]["content"].as_array().unwrap();
        let texts: Vec<&str> = c.iter().map(|p| p["text"].as_str().unwrap()).collect();
        assert_eq!(
            texts,
            ["what is this?", "[image 1: a cat]", "[image 2: a dog]"]
        );
        assert_eq!(v["messages"][0]["content"], "be brief");
    }

    #[test]
    fn data_uris_and_answers() {
        let (mime, bytes) = data_uri("data:image/PNG;base64,aGk=").unwrap().unwrap();
        assert_eq!(
            (mime.as_str(), bytes.as_slice()),
            ("image/png", b"hi".as_slice())
        );
        assert!(data_uri("https://x").is_none());
        assert!(data_uri("data:image/png,hi").unwrap().is_err());
        assert!(data_uri("data:image/png;base64,!!").unwrap().is_err());
        assert_eq!(
            transcription_text(br#"{"text":"hello"}"#).as_deref(),
            Some("hello")
        );
        assert_eq!(transcription_text(b"hello\n").as_deref(), Some("hello"));
        let chat = br#"{"choices":[{"message":{"role":"assistant","content":"a cat"}}]}"#;
        assert_eq!(chat_text(chat).as_deref(), Some("a cat"));
        let (ct, body) = transcription_form(b"RIFF", "wav", "whisper-1");
        let boundary = ct.split("boundary=").nth(1).unwrap();
        let f = sluice_core::media::peek_form(
            &body,
            boundary,
            sluice_core::media::Media::Transcription,
        )
        .unwrap();
        assert_eq!(f.model, "whisper-1");
    }
}
