//! Multimodal requests: what a model's targets take natively
//! (`modalities`), how the other parts become text (`[models.convert]`),
//! the local `[[processors]]` that may do it (OCR, voice activity), and
//! which image URLs the gateway may fetch for them (`[image_fetch]`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::plugins::{fresh_name, module_path};
use super::validate::{Collector, ms};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConvert {
    pub audio: Option<Spanned<RawConverter>>,
    pub image: Option<Spanned<RawConverter>>,
    pub on_failure: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConverter {
    pub model: Option<Spanned<String>>,
    pub processor: Option<Spanned<String>>,
    pub prompt: Option<String>,
    pub timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcessor {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    /// `vad`: the Silero VAD model.
    pub model: Option<Spanned<String>>,
    /// `ocr`: text detection and recognition models (PP-OCR).
    pub det_model: Option<Spanned<String>>,
    pub rec_model: Option<Spanned<String>>,
    /// `ocr`: the recognizer's characters, one per line (default: the
    /// `character` entry of the recognition model's metadata).
    pub dict: Option<Spanned<String>>,
    pub max_side: Option<Spanned<u64>>,
    pub threshold: Option<Spanned<f64>>,
    pub min_silence_ms: Option<Spanned<u64>>,
    pub speech_pad_ms: Option<Spanned<u64>>,
    pub concurrency: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImageFetch {
    pub allow_hosts: Option<Spanned<Vec<String>>>,
    pub allow_private: Option<bool>,
    pub max_bytes: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
}

/// The kinds of content a request part may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    Text,
    Image,
    Audio,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::Audio => "audio",
        }
    }
}

/// What a model's targets take natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modalities {
    pub image: bool,
    pub audio: bool,
}

impl Default for Modalities {
    /// Text and images, as most chat models take.
    fn default() -> Self {
        Self {
            image: true,
            audio: false,
        }
    }
}

impl Modalities {
    pub fn takes(self, m: Modality) -> bool {
        match m {
            Modality::Text => true,
            Modality::Image => self.image,
            Modality::Audio => self.audio,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The request fails (504 past a deadline, else 502 or 400).
    Fail,
    /// The part is dropped, a note takes its place, the request goes on.
    Omit,
}

/// How parts of one modality become text.
#[derive(Debug, Clone, PartialEq)]
pub struct Converter {
    /// A routed model: transcriptions for audio, a chat model for images.
    pub model: Option<Arc<str>>,
    /// A local processor: `ocr` for images (the text it finds), `vad` for
    /// audio (silence trimmed before the model transcribes it).
    pub processor: Option<Arc<str>>,
    /// What a chat model is asked about an image.
    pub prompt: String,
    /// The branch's own deadline (capped by the request's).
    pub timeout: Duration,
}

impl Converter {
    /// The `converter` label of metrics: the model, else the processor.
    pub fn label(&self) -> &str {
        self.model
            .as_deref()
            .or(self.processor.as_deref())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConvertConfig {
    pub audio: Option<Converter>,
    pub image: Option<Converter>,
    pub on_failure: OnFailure,
}

impl ConvertConfig {
    pub fn of(&self, m: Modality) -> Option<&Converter> {
        match m {
            Modality::Text => None,
            Modality::Image => self.image.as_ref(),
            Modality::Audio => self.audio.as_ref(),
        }
    }
}

pub const DEFAULT_IMAGE_PROMPT: &str =
    "Describe the image in a few sentences. Transcribe any text in it exactly.";

#[derive(Debug, Clone, PartialEq)]
pub enum ProcessorKind {
    /// Text detection and recognition (PP-OCR models).
    Ocr {
        det_model: PathBuf,
        rec_model: PathBuf,
        dict: Option<PathBuf>,
        /// Images are scaled down to this longer side first.
        max_side: u32,
    },
    /// Speech detection (Silero VAD): silence trimmed from audio.
    Vad {
        model: PathBuf,
        threshold: f32,
        min_silence_ms: u32,
        speech_pad_ms: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub name: Arc<str>,
    pub kind: ProcessorKind,
    /// Runs at once at most (each on a thread of its own).
    pub concurrency: usize,
}

impl ProcessorConfig {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ProcessorKind::Ocr { .. } => "ocr",
            ProcessorKind::Vad { .. } => "vad",
        }
    }
}

/// Which image URLs the gateway fetches itself (for a local processor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFetchConfig {
    /// Host names (`*.example.com` for subdomains); empty = none.
    pub allow_hosts: Vec<String>,
    /// Whether hosts may resolve to loopback, private, link-local or
    /// otherwise non-public addresses.
    pub allow_private: bool,
    pub max_bytes: usize,
    pub timeout: Duration,
}

impl ImageFetchConfig {
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow_hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => *h == host,
        })
    }
}

pub(super) fn image_fetch(c: &mut Collector<'_>, raw: &RawImageFetch) -> ImageFetchConfig {
    let mut allow_hosts = Vec::new();
    if let Some(h) = &raw.allow_hosts {
        for host in h.get_ref() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || bare.contains(['/', ':', '*', ' ']) {
                c.at(
                    h.span(),
                    format!("allow_hosts: '{host}' is not a host name (or *.domain)"),
                );
            }
            allow_hosts.push(host.to_ascii_lowercase());
        }
    }
    ImageFetchConfig {
        allow_hosts,
        allow_private: raw.allow_private.unwrap_or(false),
        max_bytes: c.positive(raw.max_bytes.as_ref(), 10 << 20, 1 << 30, "max_bytes") as usize,
        timeout: ms(c.positive(raw.timeout_ms.as_ref(), 5000, 600_000, "timeout_ms")),
    }
}

pub(super) fn processors(
    c: &mut Collector<'_>,
    raw: &[Spanned<RawProcessor>],
) -> Vec<ProcessorConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in raw {
        let at = p.span();
        let p = p.get_ref();
        let Some(name) = fresh_name(c, &mut seen, &p.name, "processor") else {
            continue;
        };
        let what = format!("processor '{name}'");
        let file = |c: &mut Collector<'_>, v: &Option<Spanned<String>>, key: &str| match v {
            Some(v) => Some(module_path(c, v, &format!("{what}: {key}"))),
            None => {
                c.at(at.clone(), format!("{what} needs '{key}'"));
                None
            }
        };
        let kind = match p.kind.get_ref().as_str() {
            "ocr" => {
                let det = file(c, &p.det_model, "det_model");
                let rec = file(c, &p.rec_model, "rec_model");
                let dict = p
                    .dict
                    .as_ref()
                    .map(|d| module_path(c, d, &format!("{what}: dict")));
                let max_side = c.positive(p.max_side.as_ref(), 960, 4096, "max_side") as u32;
                match (det, rec) {
                    (Some(det_model), Some(rec_model)) => ProcessorKind::Ocr {
                        det_model,
                        rec_model,
                        dict,
                        max_side,
                    },
                    _ => continue,
                }
            }
            "vad" => {
                let Some(model) = file(c, &p.model, "model") else {
                    continue;
                };
                ProcessorKind::Vad {
                    model,
                    threshold: c.float(p.threshold.as_ref(), 0.5, 0.01..=0.99, "threshold") as f32,
                    min_silence_ms: c.positive(
                        p.min_silence_ms.as_ref(),
                        500,
                        60_000,
                        "min_silence_ms",
                    ) as u32,
                    speech_pad_ms: p
                        .speech_pad_ms
                        .as_ref()
                        .map_or(200, |v| (*v.get_ref()).min(10_000) as u32),
                }
            }
            other => {
                c.at(
                    p.kind.span(),
                    format!("unknown processor kind '{other}' (ocr, vad)"),
                );
                continue;
            }
        };
        out.push(ProcessorConfig {
            name: Arc::from(name.as_str()),
            kind,
            concurrency: c.positive(p.concurrency.as_ref(), 1, 64, "concurrency") as usize,
        });
    }
    out
}

/// A model's `modalities` (text always among them). Left out: text and
/// images, except a modality `[models.convert]` names a converter for.
pub(super) fn modalities(
    c: &mut Collector<'_>,
    raw: Option<&Spanned<Vec<String>>>,
    convert: Option<&Spanned<RawConvert>>,
) -> Modalities {
    let Some(raw) = raw else {
        let converts_images = convert.is_some_and(|cv| cv.get_ref().image.is_some());
        return Modalities {
            image: !converts_images,
            audio: false,
        };
    };
    let mut m = Modalities {
        image: false,
        audio: false,
    };
    let mut text = false;
    for s in raw.get_ref() {
        match s.as_str() {
            "text" => text = true,
            "image" => m.image = true,
            "audio" => m.audio = true,
            other => c.at(
                raw.span(),
                format!("unknown modality '{other}' (text, image, audio)"),
            ),
        }
    }
    if !text {
        c.at(raw.span(), "modalities must include \"text\"");
    }
    m
}

/// A model's `[models.convert]`, checked against the models and
/// processors it names and the modalities its targets take.
pub(super) fn convert(
    c: &mut Collector<'_>,
    raw: &Spanned<RawConvert>,
    (model, takes): (&str, Modalities),
    models: &HashSet<&str>,
    processors: &[ProcessorConfig],
) -> Option<Arc<ConvertConfig>> {
    let r = raw.get_ref();
    let on_failure = match r.on_failure.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "fail")) => OnFailure::Fail,
        Some((_, "omit")) => OnFailure::Omit,
        Some((s, other)) => {
            c.at(
                s.span(),
                format!("on_failure must be \"fail\" or \"omit\", not '{other}'"),
            );
            OnFailure::Fail
        }
    };
    let one = |c: &mut Collector<'_>, conv: &Option<Spanned<RawConverter>>, m: Modality| {
        let conv = conv.as_ref()?;
        let span = conv.span();
        let v = conv.get_ref();
        let what = format!("model '{model}': convert.{}", m.as_str());
        if takes.takes(m) {
            c.at(
                span.clone(),
                format!(
                    "{what}: modalities says the targets take {} natively, so nothing would be converted",
                    m.as_str()
                ),
            );
        }
        let target = v.model.as_ref().map(|n| {
            if !models.contains(n.get_ref().as_str()) {
                c.at(n.span(), format!("{what}: unknown model '{}'", n.get_ref()));
            } else if n.get_ref() == model {
                c.at(
                    n.span(),
                    format!("{what}: a model cannot convert for itself"),
                );
            }
            Arc::<str>::from(n.get_ref().as_str())
        });
        let processor = v.processor.as_ref().map(|n| {
            let want = if m == Modality::Image { "ocr" } else { "vad" };
            match processors.iter().find(|p| *p.name == **n.get_ref()) {
                None => c.at(
                    n.span(),
                    format!("{what}: unknown processor '{}'", n.get_ref()),
                ),
                Some(p) if p.kind_name() != want => c.at(
                    n.span(),
                    format!(
                        "{what}: processor '{}' is of kind {}; {} parts need one of kind {want}",
                        n.get_ref(),
                        p.kind_name(),
                        m.as_str()
                    ),
                ),
                Some(_) => {}
            }
            Arc::<str>::from(n.get_ref().as_str())
        });
        match (m, &target, &processor) {
            (_, None, None) => c.at(span.clone(), format!("{what} needs a model or a processor")),
            (Modality::Image, Some(_), Some(_)) => c.at(
                span.clone(),
                format!("{what}: a model or a processor, not both"),
            ),
            (Modality::Audio, None, Some(_)) => c.at(
                span.clone(),
                format!("{what}: a vad processor only trims silence; a model must transcribe"),
            ),
            _ => {}
        }
        let default_ms = if m == Modality::Image { 1700 } else { 4000 };
        Some(Converter {
            model: target,
            processor,
            prompt: v
                .prompt
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE_PROMPT.to_owned()),
            timeout: ms(c.positive(v.timeout_ms.as_ref(), default_ms, 3_600_000, "timeout_ms")),
        })
    };
    let audio = one(c, &r.audio, Modality::Audio);
    let image = one(c, &r.image, Modality::Image);
    Some(Arc::new(ConvertConfig {
        audio,
        image,
        on_failure,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<super::super::Config, Vec<String>> {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let text = format!(
            r#"
[[providers]]
name = "m"
kind = "mock"

[[processors]]
name = "ocr"
kind = "ocr"
det_model = "{file}"
rec_model = "{file}"

[[processors]]
name = "vad"
kind = "vad"
model = "{file}"

[[models]]
name = "whisper"
targets = [{{ provider = "m" }}]
{extra}"#
        );
        super::super::parse(&text, "t.toml", &|_| None)
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn converters_and_processors_parse_with_their_defaults() {
        let c = parse(
            r#"
[[models]]
name = "bot"
targets = [{ provider = "m" }]
modalities = ["text"]
[models.convert]
audio = { model = "whisper", processor = "vad" }
image = { processor = "ocr", timeout_ms = 900 }
on_failure = "omit"

[[models]]
name = "plain"
targets = [{ provider = "m" }]

[[models]]
name = "implied"
targets = [{ provider = "m" }]
[models.convert]
image = { model = "whisper" }

[image_fetch]
allow_hosts = ["img.example.com", "*.CDN.example"]
"#,
        )
        .unwrap();
        let bot = &c.models[1];
        assert_eq!(
            bot.modalities,
            Modalities {
                image: false,
                audio: false
            }
        );
        let conv = bot.convert.as_ref().unwrap();
        assert_eq!(conv.on_failure, OnFailure::Omit);
        let audio = conv.audio.as_ref().unwrap();
        assert_eq!(audio.timeout, Duration::from_millis(4000));
        assert_eq!(audio.label(), "whisper");
        let image = conv.image.as_ref().unwrap();
        assert_eq!(
            (image.timeout, image.label()),
            (Duration::from_millis(900), "ocr")
        );
        assert_eq!(c.models[2].modalities, Modalities::default());
        assert!(c.models[2].convert.is_none());
        // No modalities, an image converter: images are not taken natively.
        assert_eq!(
            c.models[3].modalities,
            Modalities {
                image: false,
                audio: false
            }
        );
        assert_eq!(c.processors.len(), 2);
        assert!(
            matches!(c.processors[1].kind, ProcessorKind::Vad { threshold, .. } if threshold == 0.5)
        );
        assert!(c.image_fetch.host_allowed("img.example.com"));
        assert!(c.image_fetch.host_allowed("a.cdn.example"));
        assert!(!c.image_fetch.host_allowed("cdn.example"));
        assert!(!c.image_fetch.host_allowed("evilimg.example.com"));
        assert!(!c.image_fetch.allow_private);
        assert_eq!(c.image_fetch.max_bytes, 10 << 20);
    }

    #[test]
    fn converter_problems_are_located() {
        let errs = parse(
            r#"
[[models]]
name = "bot"
targets = [{ provider = "m" }]
modalities = ["text", "smell"]
[models.convert]
audio = { processor = "vad" }
image = { processor = "vad" }
on_failure = "shrug"

[[models]]
name = "b2"
targets = [{ provider = "m" }]
modalities = ["image"]
[models.convert]
image = { model = "nope" }
audio = { model = "whisper", processor = "ocr" }

[[processors]]
name = "x"
kind = "sonar"
"#,
        )
        .unwrap_err();
        let all = errs.join("\n");
        for want in [
            "unknown modality 'smell'",
            "a vad processor only trims silence",
            "processor 'vad' is of kind vad; image parts need one of kind ocr",
            "on_failure must be",
            "modalities must include \"text\"",
            "modalities says the targets take image natively",
            "unknown model 'nope'",
            "processor 'ocr' is of kind ocr; audio parts need one of kind vad",
            "unknown processor kind 'sonar'",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert!(errs.iter().all(|e| e.starts_with("t.toml:")), "{all}");
    }
}
