//! `sluice._sluice`: the native half of the Python package. Bytes in,
//! bytes out; `sluice/__init__.py` speaks dicts, exceptions and asyncio.
//!
//! Waiting never holds the GIL: blocking calls detach from the
//! interpreter, and async ones run on the gateway's runtime and call back
//! from a blocking-pool thread (never a runtime worker, which waiting for
//! the GIL would stall).

use std::sync::Arc;

use bytes::Bytes;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sluice_server::embed::{Gateway, Options, Reply, StartError};
use tokio::sync::{Mutex, mpsc};
use tokio::task::AbortHandle;

/// Chunks a stream buffers ahead of its reader.
const STREAM_BUFFER: usize = 32;

type Headers = Vec<(String, String)>;

fn options(api_key: Option<String>, timeout_ms: Option<u64>, headers: Option<Headers>) -> Options {
    Options {
        api_key,
        timeout_ms,
        headers: headers.unwrap_or_default(),
    }
}

/// Calls `done(*args)` with the GIL, off the runtime's workers.
fn call_back(done: Py<PyAny>, status: u16, body: Option<Bytes>) {
    tokio::task::spawn_blocking(move || {
        Python::attach(|py| {
            let body = body.map(|b| PyBytes::new(py, &b).unbind());
            // An exception in the callback (a closed event loop) has no one
            // to go to.
            let _ = done.call1(py, (status, body));
        });
    });
}

#[pyclass(frozen, module = "sluice._sluice")]
struct Native {
    gw: Arc<Gateway>,
}

#[pymethods]
impl Native {
    #[new]
    #[pyo3(signature = (config=None))]
    fn new(py: Python<'_>, config: Option<String>) -> PyResult<Self> {
        let gw = py
            .detach(|| Gateway::new(config.as_deref()))
            .map_err(|e| match e {
                StartError::Config(m) => PyValueError::new_err(m),
                StartError::Start(m) => PyRuntimeError::new_err(m),
            })?;
        Ok(Self { gw: Arc::new(gw) })
    }

    /// Swaps in a new configuration (a hot reload); ValueError lists the
    /// problems, the running configuration staying.
    fn reload(&self, py: Python<'_>, config: String) -> PyResult<()> {
        py.detach(|| self.gw.reload(&config))
            .map_err(PyValueError::new_err)
    }

    #[pyo3(signature = (key=None))]
    fn set_api_key(&self, key: Option<String>) {
        self.gw.set_default_key(key);
    }

    /// A POST, blocking without the GIL: (status, body).
    #[pyo3(signature = (path, body, api_key=None, timeout_ms=None, headers=None))]
    fn call(
        &self,
        py: Python<'_>,
        path: String,
        body: Vec<u8>,
        api_key: Option<String>,
        timeout_ms: Option<u64>,
        headers: Option<Headers>,
    ) -> (u16, Py<PyBytes>) {
        let opts = options(api_key, timeout_ms, headers);
        let Reply { status, body } =
            py.detach(|| self.gw.call_blocking(&path, Bytes::from(body), &opts));
        (status, PyBytes::new(py, &body).unbind())
    }

    /// A POST on the runtime: `done(status, body)` is called when it ends.
    #[pyo3(signature = (path, body, done, api_key=None, timeout_ms=None, headers=None))]
    fn call_async(
        &self,
        path: String,
        body: Vec<u8>,
        done: Py<PyAny>,
        api_key: Option<String>,
        timeout_ms: Option<u64>,
        headers: Option<Headers>,
    ) -> Task {
        let opts = options(api_key, timeout_ms, headers);
        let fut = self.gw.call(&path, Bytes::from(body), &opts);
        let task = self.gw.handle().spawn(async move {
            let r = fut.await;
            call_back(done, r.status, Some(r.body));
        });
        Task {
            abort: task.abort_handle(),
        }
    }

    /// A streamed POST (`"stream": true` set): its chunks, read with
    /// `next` or `next_async`.
    #[pyo3(signature = (path, body, api_key=None, timeout_ms=None, headers=None))]
    fn open_stream(
        &self,
        path: String,
        body: Vec<u8>,
        api_key: Option<String>,
        timeout_ms: Option<u64>,
        headers: Option<Headers>,
    ) -> Stream {
        let opts = options(api_key, timeout_ms, headers);
        let (rx, abort) = self
            .gw
            .stream_channel(&path, Bytes::from(body), &opts, STREAM_BUFFER);
        Stream {
            gw: self.gw.clone(),
            rx: Arc::new(Mutex::new(rx)),
            abort,
        }
    }

    #[pyo3(signature = (listen, admin_listen=None))]
    fn serve(
        &self,
        py: Python<'_>,
        listen: String,
        admin_listen: Option<String>,
    ) -> PyResult<(String, String)> {
        let (api, admin) = py
            .detach(|| self.gw.serve(&listen, admin_listen.as_deref()))
            .map_err(PyRuntimeError::new_err)?;
        Ok((api.to_string(), admin.to_string()))
    }

    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.gw.stop());
    }

    fn metrics(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.gw.metrics())
            .map_err(|r| PyRuntimeError::new_err(String::from_utf8_lossy(&r.body).into_owned()))
    }
}

/// An async call in flight.
#[pyclass(frozen, module = "sluice._sluice")]
struct Task {
    abort: AbortHandle,
}

#[pymethods]
impl Task {
    /// Cancels the request (upstream included); `done` is not called.
    fn cancel(&self) {
        self.abort.abort();
    }
}

/// A streamed answer: items are (200, chunk) or (status, error body);
/// `None` at the end. Dropping or closing it cancels the request.
#[pyclass(frozen, module = "sluice._sluice")]
struct Stream {
    gw: Arc<Gateway>,
    rx: Arc<Mutex<mpsc::Receiver<Reply>>>,
    abort: AbortHandle,
}

#[pymethods]
impl Stream {
    /// The next item, blocking without the GIL.
    fn next(&self, py: Python<'_>) -> PyResult<Option<(u16, Py<PyBytes>)>> {
        let rx = self.rx.clone();
        let item = py
            .detach(|| {
                self.gw
                    .block_on(async move { rx.lock().await.recv().await })
            })
            .map_err(|r| PyRuntimeError::new_err(String::from_utf8_lossy(&r.body).into_owned()))?;
        Ok(item.map(|r| (r.status, PyBytes::new(py, &r.body).unbind())))
    }

    /// The next item on the runtime: `done(status, body)`, or
    /// `done(0, None)` at the end.
    fn next_async(&self, done: Py<PyAny>) {
        let rx = self.rx.clone();
        self.gw.handle().spawn(async move {
            match rx.lock().await.recv().await {
                Some(r) => call_back(done, r.status, Some(r.body)),
                None => call_back(done, 0, None),
            }
        });
    }

    /// Cancels the request; later reads see the end.
    fn close(&self) {
        self.abort.abort();
        if let Ok(mut rx) = self.rx.try_lock() {
            rx.close();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

#[pymodule]
fn _sluice(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Native>()?;
    m.add_class::<Task>()?;
    m.add_class::<Stream>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
