//! OCR on the CPU with PP-OCR's ONNX models (e.g. those the
//! `rapidocr-onnxruntime` wheel ships): text boxes found by the detection
//! model, each read by the recognition model, in reading order.

pub mod det;
pub mod rec;

use std::path::Path;

use image::RgbImage;

use crate::plans::{self, Plans};

/// Lines read with a lower mean confidence are dropped.
const MIN_SCORE: f32 = 0.5;

pub struct Ocr {
    det: Plans,
    rec: Plans,
    charset: Vec<String>,
    max_side: u32,
}

impl std::fmt::Debug for Ocr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ocr")
            .field("characters", &self.charset.len())
            .field("max_side", &self.max_side)
            .finish()
    }
}

impl Ocr {
    /// Loads the models; the characters come from `dict` (one per line)
    /// or the recognition model's `character` metadata. The first image
    /// size is optimized at once, so a model the engine cannot run fails
    /// here, not on a request.
    pub fn load(
        det: &Path,
        rec: &Path,
        dict: Option<&Path>,
        max_side: u32,
    ) -> Result<Self, String> {
        let (det, _) = Plans::load(det, 16, None)?;
        let (rec, meta) = Plans::load(rec, 8, Some("character"))?;
        let table = match dict {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the dictionary '{}': {e}", p.display()))?,
            None => {
                meta.ok_or("the recognition model has no 'character' metadata: name a dict file")?
            }
        };
        let ocr = Self {
            det,
            rec,
            charset: rec::charset(&table),
            max_side: max_side.max(64),
        };
        ocr.det.get(&[1, 3, 128, 128])?;
        ocr.rec.get(&[1, 3, rec::HEIGHT, 320])?;
        Ok(ocr)
    }

    /// Decodes an image file's bytes (PNG, JPEG) and reads its text: lines
    /// joined by newlines, boxes of a line by spaces. `cancelled` is asked
    /// between steps; a run it stops ends with an error.
    pub fn read(&self, bytes: &[u8], cancelled: &dyn Fn() -> bool) -> Result<String, OcrError> {
        let img = image::load_from_memory(bytes)
            .map_err(|e| OcrError::Image(format!("{e}")))?
            .into_rgb8();
        if img.width() < 4 || img.height() < 4 {
            return Ok(String::new());
        }
        self.read_image(&img, cancelled)
    }

    pub fn read_image(
        &self,
        img: &RgbImage,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<String, OcrError> {
        let (placed, data) = det::input(img, self.max_side);
        let plan = self.det.get(&placed.shape).map_err(OcrError::Engine)?;
        let (shape, prob) = plans::run(&plan, &placed.shape, data).map_err(OcrError::Engine)?;
        if shape.len() != 4 || shape[2] != placed.shape[2] || shape[3] != placed.shape[3] {
            return Err(OcrError::Engine(format!(
                "the detection model answered shape {shape:?}"
            )));
        }
        let mut out = String::new();
        let mut line_y: Option<f32> = None;
        for b in det::boxes(&prob, &placed, img.dimensions()) {
            if cancelled() {
                return Err(OcrError::Cancelled);
            }
            let crop = image::imageops::crop_imm(img, b.x0, b.y0, b.width(), b.height()).to_image();
            let (shape, data) = rec::input(&crop);
            let plan = self.rec.get(&shape).map_err(OcrError::Engine)?;
            let (oshape, probs) = plans::run(&plan, &shape, data).map_err(OcrError::Engine)?;
            let classes = *oshape.last().unwrap_or(&0);
            if classes != self.charset.len() {
                return Err(OcrError::Engine(format!(
                    "the recognition model has {classes} classes for {} characters",
                    self.charset.len()
                )));
            }
            let (text, score) = rec::decode(&probs, classes, &self.charset);
            if text.is_empty() || score < MIN_SCORE {
                continue;
            }
            let centre = (b.y0 + b.y1) as f32 / 2.0;
            match line_y {
                Some(y) if (centre - y).abs() <= b.height() as f32 / 2.0 => out.push(' '),
                Some(_) => out.push('\n'),
                None => {}
            }
            line_y = Some(centre);
            out.push_str(&text);
        }
        Ok(out)
    }
}

/// An image as a `[3, h, w]` input in BGR order (as PP-OCR was trained),
/// each value scaled to [-1, 1], the rest of the `h × w` area 0.
fn normalized_bgr(img: &RgbImage, h: usize, w: usize) -> Vec<f32> {
    let mut data = vec![0f32; 3 * h * w];
    for (x, y, px) in img.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        for c in 0..3 {
            let v = f32::from(px[2 - c]) / 255.0;
            data[c * h * w + y * w + x] = (v - 0.5) / 0.5;
        }
    }
    data
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OcrError {
    /// The bytes are not an image this build decodes.
    Image(String),
    Engine(String),
    Cancelled,
}

impl std::fmt::Display for OcrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Image(e) => write!(f, "not a PNG or JPEG image: {e}"),
            Self::Engine(e) => f.write_str(e),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}
