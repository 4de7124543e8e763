//! The engine and the batcher on the committed fixtures (built by
//! `tests/models/make_models.py`): shapes read from the model, answers the
//! same whether run alone or in a batch, batches actually formed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_inference::{BatchConfig, DType, Data, Observer, Predictor, SubmitError, load};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// numpy's answer for [0.1, 0.2, 0.3, 0.4] and [1, -1, 0.5, 2]
/// (`make_models.mlp_reference`).
const EXPECTED: [[f32; 3]; 2] = [
    [-0.211_294, -0.227_797_66, 1.220_387_6],
    [0.057_364_524, -0.258_209, 1.520_828],
];

#[test]
fn loads_shapes_and_runs_a_batch() {
    let m = load(&fixture("mlp.onnx")).expect("loads");
    assert_eq!(m.inputs[0].name, "x");
    assert_eq!(
        (m.inputs[0].dtype, m.inputs[0].shape.clone()),
        (DType::F32, vec![4])
    );
    assert_eq!(m.outputs[0].shape, vec![3]);
    let out = m
        .run(
            2,
            &[Data::F32(vec![0.1, 0.2, 0.3, 0.4, 1.0, -1.0, 0.5, 2.0])],
        )
        .expect("runs");
    let Data::F32(y) = &out[0] else {
        panic!("f32 out")
    };
    for (got, want) in y.iter().zip(EXPECTED.iter().flatten()) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    let i = load(&fixture("add_i64.onnx")).expect("loads");
    assert_eq!(i.inputs[0].dtype, DType::I64);
    let out = i.run(1, &[Data::I64(vec![1, 2, 3])]).expect("runs");
    assert_eq!(out[0], Data::I64(vec![2, 3, 4]));
}

#[test]
fn a_missing_or_broken_file_says_so() {
    let e = load(Path::new("/nonexistent/model.onnx")).expect_err("no file");
    assert!(e.contains("cannot read"), "{e}");
    let dir = std::env::temp_dir().join(format!("sluice-broken-{}.onnx", std::process::id()));
    std::fs::write(&dir, b"not a model").expect("write");
    assert!(load(&dir).is_err());
    let _ = std::fs::remove_file(dir);
}

#[derive(Default)]
struct Count {
    batches: AtomicUsize,
    examples: AtomicUsize,
    largest: AtomicUsize,
}

impl Observer for Count {
    fn batch(&self, _: &str, size: usize, _: Duration) {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.examples.fetch_add(size, Ordering::SeqCst);
        self.largest.fetch_max(size, Ordering::SeqCst);
    }
    fn queued(&self, _: &str, _: Duration) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_batches_and_get_their_own_answers() {
    let model = Arc::new(load(&fixture("mlp.onnx")).expect("loads"));
    let count = Arc::new(Count::default());
    let p = Arc::new(Predictor::start(
        "mlp",
        model,
        BatchConfig {
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(30),
            threads: 1,
            queue_depth: 64,
        },
        count.clone(),
    ));
    let mut waits = Vec::new();
    for i in 0..16 {
        let x = if i % 2 == 0 {
            vec![0.1, 0.2, 0.3, 0.4]
        } else {
            vec![1.0, -1.0, 0.5, 2.0]
        };
        waits.push((i, p.submit(1, vec![Data::F32(x)], None).expect("queued")));
    }
    for (i, rx) in waits {
        let out = rx.await.expect("answered").expect("ran");
        let Data::F32(y) = &out[0] else { panic!("f32") };
        for (got, want) in y.iter().zip(EXPECTED[i % 2].iter()) {
            assert!((got - want).abs() < 1e-5, "request {i}: {got} vs {want}");
        }
    }
    assert_eq!(count.examples.load(Ordering::SeqCst), 16);
    assert!(
        count.batches.load(Ordering::SeqCst) <= 4,
        "16 requests in at most 4 batches"
    );
    assert!(
        count.largest.load(Ordering::SeqCst) <= 8,
        "never over max_batch_size"
    );
    assert_eq!(p.pending(), 0);
}

#[test]
fn a_full_queue_refuses() {
    let model = Arc::new(load(&fixture("mlp.onnx")).expect("loads"));
    let p = Predictor::start(
        "mlp",
        model,
        BatchConfig {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            threads: 1,
            queue_depth: 2,
        },
        Arc::new(Count::default()),
    );
    // Far more than the queue holds, faster than one thread drains it.
    let refused = (0..200)
        .map(|_| p.submit(1, vec![Data::F32(vec![0.0; 4])], None))
        .filter(|r| matches!(r, Err(SubmitError::QueueFull)))
        .count();
    assert!(refused > 0);
}
