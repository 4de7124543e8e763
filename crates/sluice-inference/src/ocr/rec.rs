//! Text recognition (PP-OCR's CTC model): one line's crop as the model's
//! input, and its per-step character probabilities decoded.

use image::RgbImage;
use image::imageops::{FilterType, resize};

/// The model's input height.
pub const HEIGHT: usize = 48;
/// Widths are padded to a multiple of this (few shapes, few plans).
const BUCKET: usize = 160;
/// Lines wider than this (after scaling to the height) are squeezed.
const MAX_WIDTH: usize = 1600;

/// The recognition input for a crop: scaled to the model's height,
/// normalized to [-1, 1] in BGR order, padded on the right with 0.
pub fn input(crop: &RgbImage) -> ([usize; 4], Vec<f32>) {
    let (w, h) = crop.dimensions();
    let ratio = w as f32 / h.max(1) as f32;
    let width = ((HEIGHT as f32 * ratio).ceil() as usize).clamp(8, MAX_WIDTH);
    let padded = width.div_ceil(BUCKET) * BUCKET;
    let scaled = resize(crop, width as u32, HEIGHT as u32, FilterType::Triangle);
    let data = super::normalized_bgr(&scaled, HEIGHT, padded);
    ([1, 3, HEIGHT, padded], data)
}

/// The character table of a CTC model: index 0 is the blank, then the
/// dictionary's lines, then a space (as PP-OCR's recognizers are trained).
pub fn charset(dict: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    out.extend(
        dict.split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
            .filter(|l| !l.is_empty()),
    );
    out.push(" ".to_owned());
    out
}

/// Greedy CTC decoding of `[steps, classes]` probabilities: the most
/// likely class per step, repeats merged, blanks dropped. Returns the text
/// and the mean probability of the characters kept (0 for none).
pub fn decode(probs: &[f32], classes: usize, charset: &[String]) -> (String, f32) {
    let mut text = String::new();
    let (mut sum, mut kept) = (0f32, 0usize);
    let mut prev = 0usize;
    for step in probs.chunks_exact(classes) {
        let (best, p) = step
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, p)| if p > a.1 { (i, p) } else { a });
        if best != 0
            && best != prev
            && let Some(c) = charset.get(best)
        {
            text.push_str(c);
            sum += p;
            kept += 1;
        }
        prev = best;
    }
    let score = if kept == 0 { 0.0 } else { sum / kept as f32 };
    (text.trim().to_owned(), score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charset_has_the_blank_first_and_a_space_last() {
        let c = charset("a\nb\r\nc\n");
        assert_eq!(c, vec!["", "a", "b", "c", " "]);
    }

    #[test]
    fn decode_merges_repeats_and_drops_blanks() {
        let cs = charset("h\ni");
        // Steps: h h blank h i i space(4) blank
        let one_hot = |i: usize| {
            let mut v = vec![0.01f32; 5];
            v[i] = 0.9;
            v
        };
        let probs: Vec<f32> = [1, 1, 0, 1, 2, 2, 4, 0]
            .into_iter()
            .flat_map(one_hot)
            .collect();
        let (text, score) = decode(&probs, 5, &cs);
        assert_eq!(text, "hhi");
        assert!((score - 0.9).abs() < 1e-6);
        assert_eq!(decode(&one_hot(0), 5, &cs), (String::new(), 0.0));
    }

    #[test]
    fn input_keeps_the_aspect_ratio_and_pads_to_the_bucket() {
        let crop = RgbImage::from_pixel(200, 40, image::Rgb([0, 0, 0]));
        let (shape, data) = input(&crop);
        // 200×40 → 240×48, padded to 320.
        assert_eq!(shape, [1, 3, 48, 320]);
        assert_eq!(data[0], -1.0);
        assert_eq!(data[239], -1.0);
        assert_eq!(data[240], 0.0);
    }
}
