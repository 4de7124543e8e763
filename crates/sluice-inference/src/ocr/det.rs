//! Text detection (PP-OCR's DB model): the image scaled and normalized
//! into the model's input, and its probability map made into boxes.

use image::RgbImage;
use image::imageops::{FilterType, resize};

/// Pixels above this probability are text.
const THRESHOLD: f32 = 0.3;
/// A region whose mean probability is below this is dropped.
const BOX_THRESHOLD: f32 = 0.5;
/// How far a region's box grows (its area × this / its perimeter): the
/// model marks the text's shrunk core.
const UNCLIP: f32 = 1.6;
/// The input's sides are padded to a multiple of this, so few shapes (and
/// few optimized plans) serve all images.
const BUCKET: usize = 128;

/// A box in the original image's pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl Rect {
    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }
    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }
}

/// Where the image went in the model's input.
pub struct Placed {
    pub shape: [usize; 4],
    /// The image's size once scaled (the rest is padding).
    pub scaled: (usize, usize),
}

/// The detection input: the image scaled so its longer side is at most
/// `max_side` and both sides are multiples of 32, normalized to [-1, 1]
/// in BGR order (as PP-OCR was trained), padded to the bucket.
pub fn input(img: &RgbImage, max_side: u32) -> (Placed, Vec<f32>) {
    let (w, h) = img.dimensions();
    let scale = (max_side as f32 / w.max(h) as f32).min(1.0);
    let round32 = |v: u32| (((v as f32 * scale) / 32.0).round() as usize).max(1) * 32;
    let (sw, sh) = (round32(w), round32(h));
    let scaled = resize(img, sw as u32, sh as u32, FilterType::Triangle);
    let bucket = |v: usize| v.div_ceil(BUCKET) * BUCKET;
    let (pw, ph) = (bucket(sw), bucket(sh));
    let data = super::normalized_bgr(&scaled, ph, pw);
    let placed = Placed {
        shape: [1, 3, ph, pw],
        scaled: (sw, sh),
    };
    (placed, data)
}

/// The text boxes in a probability map of `placed`, in the original
/// image's pixels (`size`), in reading order: lines top to bottom, boxes
/// left to right within a line.
pub fn boxes(prob: &[f32], placed: &Placed, size: (u32, u32)) -> Vec<Rect> {
    let (ph, pw) = (placed.shape[2], placed.shape[3]);
    let (sw, sh) = placed.scaled;
    let mut mask = vec![false; sw * sh];
    // Threshold, dilated by one pixel right and down (2×2), within the
    // scaled image only.
    for y in 0..sh {
        for x in 0..sw {
            let hit = |dx: usize, dy: usize| {
                x >= dx && y >= dy && prob[(y - dy) * pw + (x - dx)] > THRESHOLD
            };
            mask[y * sw + x] = hit(0, 0) || hit(1, 0) || hit(0, 1) || hit(1, 1);
        }
    }
    debug_assert!(ph >= sh && pw >= sw);
    let (fx, fy) = (size.0 as f32 / sw as f32, size.1 as f32 / sh as f32);
    let mut out = Vec::new();
    for region in regions(&mut mask, sw, sh) {
        let (x0, y0, x1, y1) = region.bounds;
        let (w, h) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
        if w.min(h) < 3.0 {
            continue;
        }
        let score: f32 = region
            .pixels
            .iter()
            .map(|&(x, y)| prob[y * pw + x])
            .sum::<f32>()
            / region.pixels.len() as f32;
        if score < BOX_THRESHOLD {
            continue;
        }
        let grow = w * h * UNCLIP / (2.0 * (w + h));
        let clamp = |v: f32, max: u32| v.max(0.0).min(max as f32) as u32;
        let r = Rect {
            x0: clamp((x0 as f32 - grow) * fx, size.0),
            y0: clamp((y0 as f32 - grow) * fy, size.1),
            x1: clamp((x1 as f32 + 1.0 + grow) * fx, size.0),
            y1: clamp((y1 as f32 + 1.0 + grow) * fy, size.1),
        };
        if r.width() >= 2 && r.height() >= 2 {
            out.push(r);
        }
    }
    reading_order(out)
}

struct Region {
    bounds: (usize, usize, usize, usize),
    pixels: Vec<(usize, usize)>,
}

/// Connected regions (8-neighbourhood) of the mask, which is consumed.
fn regions(mask: &mut [bool], w: usize, h: usize) -> Vec<Region> {
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] {
            continue;
        }
        mask[start] = false;
        stack.push(start);
        let mut r = Region {
            bounds: (usize::MAX, usize::MAX, 0, 0),
            pixels: Vec::new(),
        };
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            r.bounds = (
                r.bounds.0.min(x),
                r.bounds.1.min(y),
                r.bounds.2.max(x),
                r.bounds.3.max(y),
            );
            r.pixels.push((x, y));
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] {
                        mask[j] = false;
                        stack.push(j);
                    }
                }
            }
        }
        out.push(r);
    }
    out
}

/// Boxes in lines (a box joins a line when its vertical centre is within
/// half the line's first box's height), lines top to bottom, each left
/// to right.
pub fn reading_order(mut boxes: Vec<Rect>) -> Vec<Rect> {
    let centre = |r: &Rect| (r.y0 + r.y1) as f32 / 2.0;
    boxes.sort_by(|a, b| centre(a).total_cmp(&centre(b)));
    let mut lines: Vec<Vec<Rect>> = Vec::new();
    for b in boxes {
        match lines.last_mut() {
            Some(line)
                if (centre(&b) - centre(&line[0])).abs() <= line[0].height() as f32 / 2.0 =>
            {
                line.push(b)
            }
            _ => lines.push(vec![b]),
        }
    }
    lines
        .into_iter()
        .flat_map(|mut l| {
            l.sort_by_key(|r| r.x0);
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_scaled_to_multiples_of_32_and_padded_to_the_bucket() {
        let img = RgbImage::from_pixel(1000, 300, image::Rgb([255, 255, 255]));
        let (placed, data) = input(&img, 960);
        // 1000×300 scaled by 0.96: 960×288.
        assert_eq!(placed.scaled, (960, 288));
        assert_eq!(placed.shape, [1, 3, 384, 1024]);
        assert_eq!(data.len(), 3 * 384 * 1024);
        // White is 1.0; the padding is 0.
        assert_eq!(data[0], 1.0);
        assert_eq!(data[383 * 1024 + 1023], 0.0);
    }

    #[test]
    fn a_blob_of_probability_becomes_a_grown_box_in_image_pixels() {
        let placed = Placed {
            shape: [1, 3, 128, 128],
            scaled: (128, 64),
        };
        let mut prob = vec![0f32; 128 * 128];
        for y in 20..30 {
            for x in 10..60 {
                prob[y * 128 + x] = 0.9;
            }
        }
        // A faint region (mean under 0.5) is dropped.
        for y in 40..50 {
            for x in 10..60 {
                prob[y * 128 + x] = 0.35;
            }
        }
        // The original image was twice the size of the scaled one.
        let b = boxes(&prob, &placed, (256, 128));
        assert_eq!(b.len(), 1, "{b:?}");
        // Region x 10..=60 (dilated), y 20..=30 (51×11): grown by
        // 51·11·1.6 / (2·62) = 7.24 px each side, then ×2.
        assert_eq!(
            b[0],
            Rect {
                x0: 5,
                y0: 25,
                x1: 136,
                y1: 76
            }
        );
    }

    #[test]
    fn reading_order_is_lines_then_left_to_right() {
        let r = |x0, y0| Rect {
            x0,
            y0,
            x1: x0 + 40,
            y1: y0 + 20,
        };
        let got = reading_order(vec![r(100, 52), r(10, 50), r(50, 10), r(0, 12)]);
        assert_eq!(got, vec![r(0, 12), r(50, 10), r(10, 50), r(100, 52)]);
    }
}
