//! Dynamic batching: requests for one model wait in a bounded queue, and an
//! inference thread merges what arrived — up to `max_batch_size` examples,
//! or whatever came within `max_queue_delay` of the first — into one run,
//! then splits the outputs back to their callers. Pending requests are
//! counted with one atomic counter (no lock on the submit path beyond the
//! channel's). Inference runs on its own threads, never on the async
//! workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::{Data, Model, Shaped};

#[derive(Clone, Debug)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub threads: usize,
    /// Requests waiting at most; more are refused.
    pub queue_depth: usize,
    /// Run the inference threads at idle priority (Linux `SCHED_IDLE`):
    /// any other thread of the process (or of its cgroup) that wants the
    /// CPU gets it first, so predict load never delays the proxy.
    pub idle_priority: bool,
}

/// What the batcher reports, for metrics.
pub trait Observer: Send + Sync {
    /// A batch of `size` examples ran in `took`.
    fn batch(&self, model: &str, size: usize, took: Duration);
    /// The requests of one batch waited these times in the queue (one
    /// call per batch, so a metrics sink looks its series up once).
    fn queued(&self, model: &str, waited: &mut dyn Iterator<Item = Duration>);
}

/// The outputs for one request, or why there are none.
pub type Answer = Result<Vec<Shaped>, String>;

/// What a request asks to run.
enum Work {
    /// `rows` examples of a batched model, each input flat.
    Rows(usize, Vec<Data>),
    /// A request run alone, with its own shapes.
    Alone(Vec<Shaped>),
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Answer>,
    enqueued: Instant,
    deadline: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full.
    QueueFull,
    /// The inference threads are gone.
    Stopped,
}

/// A model with its queue and inference threads.
pub struct Predictor {
    pub name: Arc<str>,
    pub model: Arc<Model>,
    pub config: BatchConfig,
    tx: SyncSender<Job>,
    pending: Arc<AtomicUsize>,
}

impl Predictor {
    /// Starts the model's inference threads (they end when the predictor
    /// is dropped).
    pub fn start(
        name: &str,
        model: Arc<Model>,
        config: BatchConfig,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_depth.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let pending = Arc::new(AtomicUsize::new(0));
        let name: Arc<str> = Arc::from(name);
        for i in 0..config.threads.max(1) {
            let w = Worker {
                name: name.clone(),
                model: model.clone(),
                config: config.clone(),
                rx: rx.clone(),
                pending: pending.clone(),
                observer: observer.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("predict-{name}-{i}"))
                .spawn(move || w.run());
            if let Err(e) = spawned {
                tracing::error!(model = %name, error = %e, "could not start an inference thread");
            }
        }
        Self {
            name,
            model,
            config,
            tx,
            pending,
        }
    }

    /// Queues `rows` examples (of a batched model); the receiver gets
    /// their outputs.
    pub fn submit(
        &self,
        rows: usize,
        inputs: Vec<Data>,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Answer>, SubmitError> {
        self.queue(Work::Rows(rows, inputs), deadline)
    }

    /// Queues one run with the shapes given (checked by the caller with
    /// [`Model::check`]); it is never merged with another.
    pub fn submit_alone(
        &self,
        inputs: Vec<Shaped>,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Answer>, SubmitError> {
        self.queue(Work::Alone(inputs), deadline)
    }

    fn queue(
        &self,
        work: Work,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Answer>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            work,
            reply,
            enqueued: Instant::now(),
            deadline,
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// Requests waiting for a batch.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

struct Worker {
    name: Arc<str>,
    model: Arc<Model>,
    config: BatchConfig,
    rx: Arc<Mutex<Receiver<Job>>>,
    pending: Arc<AtomicUsize>,
    observer: Arc<dyn Observer>,
}

impl Worker {
    fn run(self) {
        if self.config.idle_priority {
            use thread_priority::unix::{
                NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
                thread_native_id,
            };
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            let min = thread_priority::ThreadPriority::Min;
            if let Err(e) = set_thread_priority_and_policy(thread_native_id(), min, idle) {
                tracing::warn!(model = %self.name, error = ?e, "inference thread left at normal priority");
            }
        }
        let mut carry: Option<Job> = None;
        loop {
            let Some(jobs) = self.gather(&mut carry) else {
                return;
            };
            self.execute(jobs);
        }
    }

    /// The next batch: the first job waiting (or the one left over from
    /// the last batch), then whatever joins it in time and fits.
    fn gather(&self, carry: &mut Option<Job>) -> Option<Vec<Job>> {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let first = match carry.take() {
            Some(j) => j,
            None => {
                let j = rx.recv().ok()?;
                self.pending.fetch_sub(1, Ordering::AcqRel);
                j
            }
        };
        let Work::Rows(mut rows, _) = first.work else {
            return Some(vec![first]);
        };
        let until = first.enqueued + self.config.max_queue_delay;
        let mut jobs = vec![first];
        while rows < self.config.max_batch_size {
            let left = until.saturating_duration_since(Instant::now());
            let next = if left.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(left)
            };
            let Ok(j) = next else { break };
            self.pending.fetch_sub(1, Ordering::AcqRel);
            match j.work {
                Work::Rows(n, _) if rows + n <= self.config.max_batch_size => {
                    rows += n;
                    jobs.push(j);
                }
                _ => {
                    *carry = Some(j);
                    break;
                }
            }
        }
        Some(jobs)
    }

    fn execute(&self, jobs: Vec<Job>) {
        let now = Instant::now();
        self.observer.queued(
            &self.name,
            &mut jobs
                .iter()
                .map(|j| now.saturating_duration_since(j.enqueued)),
        );
        // Callers that went away or ran out of time are not computed for.
        let mut jobs: Vec<Job> = jobs
            .into_iter()
            .filter(|j| !j.reply.is_closed() && j.deadline.is_none_or(|d| d > now))
            .collect();
        if jobs.is_empty() {
            return;
        }
        if let [only] = jobs.as_slice()
            && matches!(only.work, Work::Alone(_))
            && let Some(j) = jobs.pop()
            && let Work::Alone(inputs) = &j.work
        {
            let started = Instant::now();
            let result = self.model.run_shaped(inputs);
            self.observer.batch(&self.name, 1, started.elapsed());
            let _ = j.reply.send(result);
            return;
        }
        self.run_rows(jobs);
    }

    /// One run of the examples of `jobs` (all `Work::Rows`), split back.
    fn run_rows(&self, jobs: Vec<Job>) {
        let rows_of = |j: &Job| match &j.work {
            Work::Rows(n, _) => *n,
            Work::Alone(_) => 0,
        };
        let rows: usize = jobs.iter().map(rows_of).sum();
        let inputs: Vec<Data> = self
            .model
            .inputs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let mut d = Data::with_capacity(spec.dtype, rows * spec.per_row());
                for j in &jobs {
                    if let Work::Rows(_, x) = &j.work
                        && let Some(x) = x.get(i)
                    {
                        d.extend(x);
                    }
                }
                d
            })
            .collect();
        let started = Instant::now();
        let result = self.model.run(rows, &inputs);
        self.observer.batch(&self.name, rows, started.elapsed());
        match result {
            Ok(outputs) => {
                let mut at = 0;
                for j in jobs {
                    let n = rows_of(&j);
                    let mine = outputs.iter().map(|o| o.rows(at..at + n)).collect();
                    at += n;
                    let _ = j.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
