//! The engine and the batcher on the committed fixtures (built by
//! `tests/models/make_models.py`): shapes read from the model, answers the
//! same whether run alone or in a batch, batches actually formed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_inference::{
    BatchConfig, DType, Data, Dim, Observer, Predictor, Shaped, SubmitError, load,
};

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
    assert!(m.batched);
    assert_eq!(m.inputs[0].name, "x");
    assert_eq!(m.inputs[0].dims, vec![Dim::Batch, Dim::Fixed(4)]);
    assert_eq!(
        (m.inputs[0].dtype, m.inputs[0].shape()),
        (DType::F32, vec![4])
    );
    assert_eq!(m.outputs[0].shape(), vec![3]);
    let out = m
        .run(
            2,
            &[Data::F32(vec![0.1, 0.2, 0.3, 0.4, 1.0, -1.0, 0.5, 2.0])],
        )
        .expect("runs");
    assert_eq!(out[0].shape, vec![2, 3]);
    let Data::F32(y) = &out[0].data else {
        panic!("f32 out")
    };
    for (got, want) in y.iter().zip(EXPECTED.iter().flatten()) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    let i = load(&fixture("add_i64.onnx")).expect("loads");
    assert_eq!(i.inputs[0].dtype, DType::I64);
    let out = i.run(1, &[Data::I64(vec![1, 2, 3])]).expect("runs");
    assert_eq!(out[0].data, Data::I64(vec![2, 3, 4]));
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
    fn queued(&self, _: &str, _: &mut dyn Iterator<Item = Duration>) {}
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
            idle_priority: false,
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
        assert_eq!(out[0].shape, vec![1, 3]);
        let Data::F32(y) = &out[0].data else {
            panic!("f32")
        };
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
            idle_priority: false,
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

fn f32s(shape: &[usize], v: &[f32]) -> Shaped {
    Shaped {
        shape: shape.to_vec(),
        data: Data::F32(v.to_vec()),
    }
}

#[test]
fn a_model_without_a_batch_dimension_runs_with_the_shapes_given() {
    let m = load(&fixture("state.onnx")).expect("loads");
    assert!(!m.batched, "h has no batch dimension");
    assert_eq!(m.inputs[0].dims, vec![Dim::Open("T".into()), Dim::Fixed(4)]);
    assert_eq!(m.inputs[1].dims, vec![Dim::Fixed(1), Dim::Fixed(4)]);
    assert_eq!(m.inputs[0].oip_shape(), vec![-1, 4]);
    let x = [
        1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0, 0.5, 0.5, 0.5, 0.5,
    ];
    let h = [0.25, 0.0, -1.0, 2.0];
    let inputs = [f32s(&[3, 4], &x), f32s(&[1, 4], &h)];
    m.check(&inputs).expect("fits");
    let out = m.run_shaped(&inputs).expect("runs");
    assert_eq!(out[0].shape, vec![3, 4]);
    assert_eq!(out[1].shape, vec![1, 4]);
    let want_y: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + h[i % 4]).collect();
    assert_eq!(out[0].data, Data::F32(want_y));
    assert_eq!(out[1].data, Data::F32(vec![11.75, 22.5, 32.5, 46.5]));
    // A different T runs too.
    let one = [f32s(&[1, 4], &x[..4]), f32s(&[1, 4], &h)];
    assert_eq!(m.run_shaped(&one).expect("runs")[0].shape, vec![1, 4]);
}

#[test]
fn shapes_that_do_not_fit_are_named() {
    let m = load(&fixture("state.onnx")).expect("loads");
    let h = f32s(&[1, 4], &[0.0; 4]);
    let e = m
        .check(&[f32s(&[2, 3], &[0.0; 6]), h.clone()])
        .expect_err("4 is fixed");
    assert!(e.contains("input 'x'") && e.contains("[-1, 4]"), "{e}");
    let e = m
        .check(&[f32s(&[2, 4], &[0.0; 7]), h.clone()])
        .expect_err("too few values");
    assert!(e.contains("holds 8 values, received 7"), "{e}");
    let e = m
        .check(&[f32s(&[2, 4], &[0.0; 8]), f32s(&[4], &[0.0; 4])])
        .expect_err("rank");
    assert!(e.contains("input 'h'"), "{e}");
    let ints = Shaped {
        shape: vec![1, 4],
        data: Data::I64(vec![0; 4]),
    };
    let e = m.check(&[ints, h]).expect_err("type");
    assert!(e.contains("FP32 expected, received INT64"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbatched_requests_each_run_alone() {
    let model = Arc::new(load(&fixture("state.onnx")).expect("loads"));
    let count = Arc::new(Count::default());
    let p = Predictor::start(
        "state",
        model,
        BatchConfig {
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(20),
            threads: 1,
            queue_depth: 16,
            idle_priority: true,
        },
        count.clone(),
    );
    let mut waits = Vec::new();
    for t in 1..=4usize {
        let x = vec![t as f32; t * 4];
        let inputs = vec![f32s(&[t, 4], &x), f32s(&[1, 4], &[0.0; 4])];
        waits.push((t, p.submit_alone(inputs, None).expect("queued")));
    }
    for (t, rx) in waits {
        let out = rx.await.expect("answered").expect("ran");
        assert_eq!(out[0].shape, vec![t, 4]);
        assert_eq!(out[1].data, Data::F32(vec![(t * t) as f32; 4]));
    }
    assert_eq!(count.batches.load(Ordering::SeqCst), 4);
    assert_eq!(count.largest.load(Ordering::SeqCst), 1);
}
