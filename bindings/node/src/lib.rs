//! The native half of the Node.js package: strings in, strings out;
//! `index.js` speaks objects, errors and async iterators.
//!
//! Calls run on the gateway's runtime; the event loop never blocks on one.

use std::sync::Arc;

use bytes::Bytes;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use sluice_server::embed::{Gateway, Options, Reply, StartError};
use tokio::sync::{Mutex, mpsc};
use tokio::task::AbortHandle;

/// Chunks a stream buffers ahead of its reader.
const STREAM_BUFFER: usize = 32;

/// A call's options besides its body.
#[napi(object)]
pub struct CallOptions {
    pub api_key: Option<String>,
    pub timeout_ms: Option<u32>,
    pub headers: Option<Vec<Vec<String>>>,
}

/// An answer: the HTTP status it would have had and its JSON.
#[napi(object)]
pub struct NativeReply {
    pub status: u32,
    pub body: String,
}

fn options(o: Option<CallOptions>) -> Options {
    let Some(o) = o else {
        return Options::default();
    };
    Options {
        api_key: o.api_key,
        timeout_ms: o.timeout_ms.map(u64::from),
        headers: o
            .headers
            .unwrap_or_default()
            .into_iter()
            .filter_map(|mut kv| {
                let v = kv.pop()?;
                Some((kv.pop()?, v))
            })
            .collect(),
    }
}

fn reply(r: Reply) -> NativeReply {
    NativeReply {
        status: u32::from(r.status),
        body: String::from_utf8_lossy(&r.body).into_owned(),
    }
}

#[napi]
pub struct NativeGateway {
    gw: Arc<Gateway>,
}

#[napi]
impl NativeGateway {
    /// A gateway from a TOML configuration, or the embedded default. A
    /// refused configuration throws with `code` "invalid_config".
    #[napi(constructor)]
    pub fn new(config: Option<String>) -> Result<Self> {
        match Gateway::new(config.as_deref()) {
            Ok(gw) => Ok(Self { gw: Arc::new(gw) }),
            Err(StartError::Config(m)) => Err(Error::new(Status::InvalidArg, m)),
            Err(StartError::Start(m)) => Err(Error::new(Status::GenericFailure, m)),
        }
    }

    /// Swaps in a new configuration (a hot reload); a refused one throws
    /// with the problems, the running configuration staying.
    #[napi]
    pub fn reload(&self, config: String) -> Result<()> {
        self.gw
            .reload(&config)
            .map_err(|m| Error::new(Status::InvalidArg, m))
    }

    #[napi]
    pub fn set_api_key(&self, key: Option<String>) {
        self.gw.set_default_key(key);
    }

    /// A POST of `body` (JSON) to `path`.
    #[napi]
    pub async fn call(
        &self,
        path: String,
        body: String,
        opts: Option<CallOptions>,
    ) -> Result<NativeReply> {
        let fut = self.gw.call(&path, Bytes::from(body), &options(opts));
        Ok(reply(fut.await))
    }

    /// A streamed POST (`"stream": true` set).
    #[napi]
    pub fn open_stream(
        &self,
        path: String,
        body: String,
        opts: Option<CallOptions>,
    ) -> NativeStream {
        let (rx, abort) =
            self.gw
                .stream_channel(&path, Bytes::from(body), &options(opts), STREAM_BUFFER);
        NativeStream {
            rx: Arc::new(Mutex::new(rx)),
            abort,
        }
    }

    /// Serves HTTP too; returns [api address, admin address].
    #[napi]
    pub fn serve(&self, listen: String, admin_listen: Option<String>) -> Result<Vec<String>> {
        let (api, admin) = self
            .gw
            .serve(&listen, admin_listen.as_deref())
            .map_err(|e| Error::new(Status::GenericFailure, e))?;
        Ok(vec![api.to_string(), admin.to_string()])
    }

    #[napi]
    pub fn stop(&self) {
        self.gw.stop();
    }

    #[napi]
    pub fn metrics(&self) -> Result<String> {
        self.gw.metrics().map_err(|r| {
            Error::new(
                Status::GenericFailure,
                String::from_utf8_lossy(&r.body).into_owned(),
            )
        })
    }
}

/// A streamed answer: items are {status: 200, body: chunk} or an error
/// reply; null at the end. Closing it cancels the request.
#[napi]
pub struct NativeStream {
    rx: Arc<Mutex<mpsc::Receiver<Reply>>>,
    abort: AbortHandle,
}

#[napi]
impl NativeStream {
    #[napi]
    pub async fn next(&self) -> Result<Option<NativeReply>> {
        let rx = self.rx.clone();
        let item = rx.lock().await.recv().await;
        Ok(item.map(reply))
    }

    #[napi]
    pub fn close(&self) {
        self.abort.abort();
        if let Ok(mut rx) = self.rx.try_lock() {
            rx.close();
        }
    }
}

impl Drop for NativeStream {
    fn drop(&mut self) {
        self.abort.abort();
    }
}
