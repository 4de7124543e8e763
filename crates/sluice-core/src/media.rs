//! The media and auxiliary endpoints (audio, images, moderations, rerank):
//! which ones there are, and the few fields of a `multipart/form-data`
//! upload the gateway acts on, read without copying the file.
//!
//! Uploads go upstream as the client sent them; only the `model` field's
//! value is spliced when the route maps it to another upstream model, and
//! the `prompt` field's text when prompt redaction finds data in it.

use std::borrow::Cow;
use std::ops::Range;

use crate::error::{ErrorKind, GatewayError};
use crate::request::RequestPeek;

/// An OpenAI media or auxiliary endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// `/v1/audio/speech`: JSON in, audio bytes out.
    Speech,
    /// `/v1/audio/transcriptions` (a form upload).
    Transcription,
    /// `/v1/audio/translations` (a form upload).
    Translation,
    /// `/v1/images/generations`.
    ImageGeneration,
    /// `/v1/images/edits` (a form upload).
    ImageEdit,
    /// `/v1/moderations`.
    Moderation,
    /// `/v1/rerank` (the Cohere / Jina shape).
    Rerank,
}

/// The model a moderation request without one is for (OpenAI's default).
pub const DEFAULT_MODERATION_MODEL: &str = "omni-moderation-latest";

impl Media {
    pub const ALL: [Media; 7] = [
        Self::Speech,
        Self::Transcription,
        Self::Translation,
        Self::ImageGeneration,
        Self::ImageEdit,
        Self::Moderation,
        Self::Rerank,
    ];

    /// The path under an OpenAI-compatible base URL (`…/v1`).
    pub fn path(self) -> &'static str {
        match self {
            Self::Speech => "/audio/speech",
            Self::Transcription => "/audio/transcriptions",
            Self::Translation => "/audio/translations",
            Self::ImageGeneration => "/images/generations",
            Self::ImageEdit => "/images/edits",
            Self::Moderation => "/moderations",
            Self::Rerank => "/rerank",
        }
    }

    /// The client-facing route (`/v1…`), for metrics and logs.
    pub fn route(self) -> &'static str {
        match self {
            Self::Speech => "/v1/audio/speech",
            Self::Transcription => "/v1/audio/transcriptions",
            Self::Translation => "/v1/audio/translations",
            Self::ImageGeneration => "/v1/images/generations",
            Self::ImageEdit => "/v1/images/edits",
            Self::Moderation => "/v1/moderations",
            Self::Rerank => "/v1/rerank",
        }
    }

    /// Whether the request is a `multipart/form-data` upload.
    pub fn form(self) -> bool {
        matches!(
            self,
            Self::Transcription | Self::Translation | Self::ImageEdit
        )
    }

    /// Whether a successful answer is always JSON (speech is audio; a
    /// transcript may be asked for as text, SRT or VTT).
    pub fn answers_json(self) -> bool {
        !matches!(self, Self::Speech | Self::Transcription | Self::Translation)
    }

    /// `gen_ai.operation.name`-style name, for traces and logs.
    pub fn operation_name(self) -> &'static str {
        match self {
            Self::Speech => "speech",
            Self::Transcription => "transcription",
            Self::Translation => "translation",
            Self::ImageGeneration => "image_generation",
            Self::ImageEdit => "image_edit",
            Self::Moderation => "moderation",
            Self::Rerank => "rerank",
        }
    }

    /// The JSON field a JSON request of this kind cannot do without.
    pub(crate) fn required_field(self) -> &'static [&'static str] {
        match self {
            Self::Speech | Self::Moderation => &["input"],
            Self::ImageGeneration => &["prompt"],
            Self::Rerank => &["query", "documents"],
            Self::Transcription | Self::Translation | Self::ImageEdit => &[],
        }
    }

    /// The form fields that carry the uploaded file (any one will do).
    fn file_fields(self) -> &'static [&'static str] {
        match self {
            Self::ImageEdit => &["image", "image[]"],
            _ => &["file"],
        }
    }
}

/// One part of a form: its name, file name, content type and value bytes.
#[derive(Debug)]
pub struct Part<'a> {
    pub name: Cow<'a, str>,
    pub filename: Option<Cow<'a, str>>,
    pub content_type: Option<&'a str>,
    /// Where the value lies in the whole body.
    pub span: Range<usize>,
}

/// The boundary of a `multipart/form-data` content type, if it is one.
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut parts = content_type.split(';');
    let essence = parts.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 200).then_some(v)
    })
}

/// The parts of a whole form body, in order.
pub fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, GatewayError> {
    match scan(body, boundary)? {
        Scan::Whole(parts) => Ok(parts),
        Scan::Partial(..) => Err(bad_form("the form has no closing boundary")),
    }
}

/// How far a form's bytes go.
enum Scan<'a> {
    /// Up to its closing delimiter.
    Whole(Vec<Part<'a>>),
    /// Cut short: the parts complete so far, and the one still arriving
    /// (once its headers are in).
    Partial(Vec<Part<'a>>, Option<Part<'a>>),
}

fn scan<'a>(body: &'a [u8], boundary: &str) -> Result<Scan<'a>, GatewayError> {
    let delim = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delim.as_bytes());
    let Some(first) = finder.find(body) else {
        return Err(bad_form("no part starts with the boundary"));
    };
    let mut pos = first + delim.len();
    let mut out = Vec::new();
    loop {
        if body.len() < pos + 2 {
            return Ok(Scan::Partial(out, None));
        }
        if body[pos..].starts_with(b"--") {
            return Ok(Scan::Whole(out)); // the closing delimiter
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err(bad_form("a boundary is not followed by a line break"));
        }
        pos += 2;
        let Some(head_len) = memchr::memmem::find(&body[pos..], b"\r\n\r\n") else {
            return Ok(Scan::Partial(out, None));
        };
        let head = std::str::from_utf8(&body[pos..pos + head_len])
            .map_err(|_| bad_form("a part's headers are not UTF-8"))?;
        let value_start = pos + head_len + 4;
        // The value ends at CRLF + the next delimiter.
        let Some(len) = finder.find(&body[value_start..]) else {
            let arriving = part_of(head, value_start..body.len())?;
            return Ok(Scan::Partial(out, Some(arriving)));
        };
        let end = value_start + len;
        if end < value_start + 2 || &body[end - 2..end] != b"\r\n" {
            return Err(bad_form("a part does not end with a line break"));
        }
        out.push(part_of(head, value_start..end - 2)?);
        pos = end + delim.len();
    }
}

fn part_of(head: &str, span: Range<usize>) -> Result<Part<'_>, GatewayError> {
    let mut name = None;
    let mut filename = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim();
        if k.eq_ignore_ascii_case("content-type") {
            content_type = Some(v.trim());
        } else if k.eq_ignore_ascii_case("content-disposition") {
            for param in v.split(';').skip(1) {
                let Some((pk, pv)) = param.split_once('=') else {
                    continue;
                };
                let pv = unquote(pv.trim());
                match pk.trim() {
                    "name" => name = Some(pv),
                    "filename" => filename = Some(pv),
                    _ => {}
                }
            }
        }
    }
    let name = name.ok_or_else(|| bad_form("a part has no name"))?;
    Ok(Part {
        name,
        filename,
        content_type,
        span,
    })
}

fn unquote(v: &str) -> Cow<'_, str> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if inner.contains('\\') => Cow::Owned(inner.replace("\\\"", "\"")),
        Some(inner) => Cow::Borrowed(inner),
        None => Cow::Borrowed(v),
    }
}

/// The fields the gateway acts on from a whole form upload: `model` (and
/// where its value lies), `stream`, and that a file is there.
pub fn peek_form<'a>(
    body: &'a [u8],
    boundary: &str,
    media: Media,
) -> Result<RequestPeek<'a>, GatewayError> {
    let parts = parts(body, boundary)?;
    let peek = fields(body, &parts, None, media)?;
    peek.ok_or_else(|| missing("model"))
}

/// The same from the first bytes of an upload still arriving: `None`
/// until the `model` field and the start of a file are in.
pub fn peek_form_prefix<'a>(
    prefix: &'a [u8],
    boundary: &str,
    media: Media,
) -> Result<Option<RequestPeek<'a>>, GatewayError> {
    match scan(prefix, boundary)? {
        Scan::Whole(parts) => fields(prefix, &parts, None, media),
        Scan::Partial(parts, arriving) => {
            let file_arriving = arriving
                .as_ref()
                .is_some_and(|p| media.file_fields().contains(&&*p.name));
            if !file_arriving
                && !parts
                    .iter()
                    .any(|p| media.file_fields().contains(&&*p.name))
            {
                return Ok(None);
            }
            match fields(prefix, &parts, arriving.as_ref(), media) {
                Err(e) if e.param == Some("model") => Ok(None),
                other => other,
            }
        }
    }
}

fn fields<'a>(
    body: &'a [u8],
    parts: &[Part<'a>],
    arriving: Option<&Part<'a>>,
    media: Media,
) -> Result<Option<RequestPeek<'a>>, GatewayError> {
    let text = |p: &Part<'_>| {
        std::str::from_utf8(&body[p.span.clone()])
            .map_err(|_| bad_form(format!("field '{}' is not UTF-8 text", p.name)))
    };
    let mut model = None;
    let mut stream = false;
    let mut file = arriving.is_some_and(|p| media.file_fields().contains(&&*p.name));
    for p in parts {
        match &*p.name {
            "model" => model = Some((text(p)?, p.span.clone())),
            "stream" => stream = text(p)?.trim() == "true",
            n if media.file_fields().contains(&n) => file = true,
            _ => {}
        }
    }
    let Some((model, model_span)) = model else {
        return Err(missing("model"));
    };
    if model.trim().is_empty() {
        return Err(
            GatewayError::new(ErrorKind::InvalidRequest, "'model' must not be empty")
                .with_param("model"),
        );
    }
    if !file {
        return Err(missing(media.file_fields()[0]));
    }
    Ok(Some(RequestPeek {
        model: Cow::Borrowed(model),
        model_span,
        stream,
        include_usage: false,
        max_tokens: None,
    }))
}

/// The form with the `model` value at `span` replaced by `model`.
pub fn rewrite_form_model(body: &[u8], span: Range<usize>, model: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + model.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(model.as_bytes());
    out.extend_from_slice(&body[span.end..]);
    out
}

/// The form fields that are prompt text (transcription, translation and
/// image-edit prompts): what prompt redaction rewrites in a form.
pub const PROMPT_FIELDS: [&str; 1] = ["prompt"];

/// The form with the text of its [`PROMPT_FIELDS`] passed through
/// `redact`, every other byte as sent (files untouched). Of an upload
/// still arriving (`body` its first bytes), the fields complete so far.
/// `None` when nothing changed.
pub fn redact_form(
    body: &[u8],
    boundary: &str,
    redact: impl Fn(&str) -> Cow<'_, str>,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let parts = match scan(body, boundary)? {
        Scan::Whole(parts) | Scan::Partial(parts, _) => parts,
    };
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0;
    for p in parts {
        if p.filename.is_some() || !PROMPT_FIELDS.contains(&&*p.name) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&body[p.span.clone()]) else {
            continue;
        };
        if let Cow::Owned(new) = redact(text) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 64));
            o.extend_from_slice(&body[at..p.span.start]);
            o.extend_from_slice(new.as_bytes());
            at = p.span.end;
        }
    }
    Ok(out.map(|mut o| {
        o.extend_from_slice(&body[at..]);
        o
    }))
}

fn missing(field: &'static str) -> GatewayError {
    GatewayError::new(
        ErrorKind::InvalidRequest,
        format!("missing required form field '{field}'"),
    )
    .with_param(field)
}

fn bad_form(why: impl Into<String>) -> GatewayError {
    GatewayError::new(
        ErrorKind::InvalidRequest,
        format!("malformed multipart/form-data body: {}", why.into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, file, value) in parts {
            b.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
            b.extend_from_slice(name.as_bytes());
            b.push(b'"');
            if let Some(f) = file {
                b.extend_from_slice(
                    format!("; filename=\"{f}\"\r\nContent-Type: audio/wav").as_bytes(),
                );
            }
            b.extend_from_slice(b"\r\n\r\n");
            b.extend_from_slice(value);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn prompt_fields_are_redacted_and_files_kept() {
        fn tag(t: &str) -> Cow<'_, str> {
            match t.contains("jane") {
                true => Cow::Owned(t.replace("jane@example.com", "[EMAIL]")),
                false => Cow::Borrowed(t),
            }
        }
        let file: &[u8] = b"RIFF\xffjane@example.com";
        let body = form(&[
            ("model", None, b"whisper"),
            ("prompt", None, b"spell jane@example.com"),
            ("prompt", Some("p.wav"), file),
        ]);
        let out = redact_form(&body, "XyZ", tag).unwrap().unwrap();
        let want = form(&[
            ("model", None, b"whisper"),
            ("prompt", None, b"spell [EMAIL]"),
            ("prompt", Some("p.wav"), file),
        ]);
        assert_eq!(out, want);
        // Nothing to redact, and a prompt still arriving: unchanged.
        assert_eq!(redact_form(&want, "XyZ", tag).unwrap(), None);
        let cut = &body[..body.len() - 30];
        let head = memchr::memmem::find(cut, b"spell").unwrap();
        assert!(redact_form(&cut[..head + 8], "XyZ", tag).unwrap().is_none());
        assert!(redact_form(b"no form", "XyZ", tag).is_err());
    }

    #[test]
    fn all_is_in_declaration_order() {
        // Endpoint tables are indexed by `m as usize`.
        for (i, m) in Media::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
        }
    }

    #[test]
    fn boundary_of_content_type() {
        assert_eq!(boundary("multipart/form-data; boundary=abc"), Some("abc"));
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b\""),
            Some("a b")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
    }

    #[test]
    fn reads_model_and_finds_the_file() {
        let body = form(&[
            ("file", Some("a.wav"), b"RIFF\r\n--X binary\x00\xff"),
            ("model", None, b"whisper-1"),
            ("stream", None, b"true"),
        ]);
        let p = peek_form(&body, "XyZ", Media::Transcription).unwrap();
        assert_eq!(p.model, "whisper-1");
        assert!(p.stream);
        assert_eq!(&body[p.model_span.clone()], b"whisper-1");
        let parts = parts(&body, "XyZ").unwrap();
        assert_eq!(parts[0].filename.as_deref(), Some("a.wav"));
        assert_eq!(parts[0].content_type, Some("audio/wav"));
        assert_eq!(&body[parts[0].span.clone()], b"RIFF\r\n--X binary\x00\xff");
        let out = rewrite_form_model(&body, p.model_span, "real-model");
        let again = peek_form(&out, "XyZ", Media::Transcription).unwrap();
        assert_eq!(again.model, "real-model");
    }

    #[test]
    fn a_prefix_is_read_once_model_and_file_are_in() {
        let body = form(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.wav"), &[7u8; 5000]),
        ]);
        // Cut inside the file: the model is known, the file has begun.
        let p = peek_form_prefix(&body[..1000], "XyZ", Media::Transcription)
            .unwrap()
            .expect("model and file seen");
        assert_eq!(p.model, "whisper-1");
        // Cut before the file began, or inside the model: not yet.
        let model_end = memchr::memmem::find(&body, b"whisper-1").unwrap() + 9;
        assert!(
            peek_form_prefix(&body[..model_end], "XyZ", Media::Transcription)
                .unwrap()
                .is_none()
        );
        assert!(
            peek_form_prefix(&body[..model_end - 3], "XyZ", Media::Transcription)
                .unwrap()
                .is_none()
        );
        // The file first, the model after it: not until the model is in.
        let late = form(&[("file", Some("a"), &[1u8; 3000]), ("model", None, b"m")]);
        assert!(
            peek_form_prefix(&late[..2000], "XyZ", Media::Transcription)
                .unwrap()
                .is_none()
        );
        // A whole form in the prefix is read like a whole form.
        assert!(
            peek_form_prefix(&late, "XyZ", Media::Transcription)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn refuses_what_is_missing_or_malformed() {
        let no_file = form(&[("model", None, b"m")]);
        let e = peek_form(&no_file, "XyZ", Media::Transcription).unwrap_err();
        assert_eq!(e.param, Some("file"));
        let e = peek_form(&no_file, "XyZ", Media::ImageEdit).unwrap_err();
        assert_eq!(e.param, Some("image"));
        let no_model = form(&[("file", Some("a"), b"x")]);
        let e = peek_form(&no_model, "XyZ", Media::Transcription).unwrap_err();
        assert_eq!(e.param, Some("model"));
        for bad in [&b""[..], b"--XyZ\r\nno end", b"--XyZ\r\nA: b\r\n\r\nvalue"] {
            let e = peek_form(bad, "XyZ", Media::Transcription).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn scanner_never_panics_on_mutations() {
        let seed = form(&[("file", Some("a.wav"), b"abc"), ("model", None, b"m")]);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut body = seed.clone();
            for _ in 0..(next() % 5) {
                let pos = (next() as usize) % body.len();
                match next() % 3 {
                    0 => body[pos] = next() as u8,
                    1 => {
                        body.insert(pos, b"-\r\n\"=;"[(next() % 6) as usize]);
                    }
                    _ => {
                        body.remove(pos);
                    }
                }
            }
            if let Ok(p) = peek_form(&body, "XyZ", Media::Transcription) {
                assert_eq!(&body[p.model_span.clone()], p.model.as_bytes());
            }
        }
    }
}
