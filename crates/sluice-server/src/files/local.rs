//! Files and batches kept in memory, for the mock provider: OpenAI's file
//! and batch objects, each visible only to the key that made it, within a
//! byte and count budget.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method};
use serde_json::{Value, json};
use sluice_core::{ErrorKind, GatewayError};

use super::FilesRequest;
use crate::app::App;
use crate::clock::now_unix;

/// Bytes of files kept at most, and files at most.
const MAX_BYTES: usize = 512 << 20;
const MAX_FILES: usize = 10_000;
const MAX_BATCHES: usize = 10_000;

#[derive(Default)]
pub struct LocalFiles {
    pub(super) inner: Mutex<Store>,
}

#[derive(Default)]
pub(super) struct Store {
    files: BTreeMap<String, StoredFile>,
    pub(super) batches: BTreeMap<String, StoredBatch>,
    bytes: usize,
    next: u64,
}

struct StoredFile {
    meta: Value,
    data: Bytes,
    owner: Option<Arc<str>>,
}

pub(super) struct StoredBatch {
    pub(super) object: Value,
    owner: Option<Arc<str>>,
    pub(super) cancel: bool,
}

impl Store {
    /// A new id: the prefix, then a counter and the time (unique in this
    /// process, sortable by creation).
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:010x}{:06x}", now_unix(), self.next)
    }

    /// Keeps a file; its object.
    pub(super) fn add_file(
        &mut self,
        filename: &str,
        purpose: &str,
        data: Bytes,
        owner: Option<Arc<str>>,
    ) -> Result<Value, GatewayError> {
        if self.bytes + data.len() > MAX_BYTES || self.files.len() >= MAX_FILES {
            return Err(GatewayError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the gateway's file store is full ({MAX_FILES} files or {MAX_BYTES} bytes); \
                     delete files first"
                ),
            ));
        }
        let id = self.id("file-");
        let meta = json!({
            "id": id, "object": "file", "bytes": data.len(), "created_at": now_unix(),
            "filename": filename, "purpose": purpose, "status": "processed",
            "expires_at": null, "status_details": null,
        });
        self.bytes += data.len();
        self.files.insert(
            id,
            StoredFile {
                meta: meta.clone(),
                data,
                owner,
            },
        );
        Ok(meta)
    }

    pub(super) fn file_data(&self, id: &str, owner: &Option<Arc<str>>) -> Option<Bytes> {
        self.files
            .get(id)
            .filter(|f| &f.owner == owner)
            .map(|f| f.data.clone())
    }

    pub(super) fn batch_mut(&mut self, id: &str) -> Option<&mut StoredBatch> {
        self.batches.get_mut(id)
    }
}

/// Serves one files or batches request from memory.
pub(super) fn serve(app: &Arc<App>, r: FilesRequest) -> Result<Response, GatewayError> {
    let segs: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let store = &app.local_files;
    match (&r.method, segs.as_slice()) {
        (&Method::POST, ["files"]) => upload(store, &r),
        (&Method::GET, ["files"]) => {
            let purpose = query_param(r.query.as_deref(), "purpose");
            let s = store.inner.lock().expect("files lock");
            let items = s
                .files
                .values()
                .filter(|f| f.owner == r.key)
                .filter(|f| purpose.as_deref().is_none_or(|p| f.meta["purpose"] == p))
                .map(|f| f.meta.clone());
            Ok(list(items, r.query.as_deref()))
        }
        (&Method::GET, ["files", id]) => {
            let s = store.inner.lock().expect("files lock");
            let f = s.files.get(*id).filter(|f| f.owner == r.key);
            f.map(|f| axum::Json(f.meta.clone()).into_response())
                .ok_or_else(|| not_found("file", id))
        }
        (&Method::DELETE, ["files", id]) => {
            let mut s = store.inner.lock().expect("files lock");
            if s.files.get(*id).is_none_or(|f| f.owner != r.key) {
                return Err(not_found("file", id));
            }
            if let Some(f) = s.files.remove(*id) {
                s.bytes -= f.data.len();
            }
            Ok(axum::Json(json!({"id": id, "object": "file", "deleted": true})).into_response())
        }
        (&Method::GET, ["files", id, "content"]) => {
            let data = store
                .inner
                .lock()
                .expect("files lock")
                .file_data(id, &r.key);
            let data = data.ok_or_else(|| not_found("file", id))?;
            let mut out = Response::new(Body::from(data));
            out.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            Ok(out)
        }
        (&Method::POST, ["batches"]) => super::batch::create(app, r),
        (&Method::GET, ["batches"]) => {
            let s = store.inner.lock().expect("files lock");
            let items = s
                .batches
                .values()
                .rev() // newest first, as OpenAI lists them
                .filter(|b| b.owner == r.key)
                .map(|b| b.object.clone());
            Ok(list(items, r.query.as_deref()))
        }
        (&Method::GET, ["batches", id]) => {
            let s = store.inner.lock().expect("files lock");
            let b = s.batches.get(*id).filter(|b| b.owner == r.key);
            b.map(|b| axum::Json(b.object.clone()).into_response())
                .ok_or_else(|| not_found("batch", id))
        }
        (&Method::POST, ["batches", id, "cancel"]) => {
            let mut s = store.inner.lock().expect("files lock");
            let b = s.batches.get_mut(*id).filter(|b| b.owner == r.key);
            let b = b.ok_or_else(|| not_found("batch", id))?;
            let status = b.object["status"].as_str().unwrap_or_default();
            if matches!(status, "validating" | "in_progress") {
                b.cancel = true;
                b.object["status"] = json!("cancelling");
                b.object["cancelling_at"] = json!(now_unix());
            }
            Ok(axum::Json(b.object.clone()).into_response())
        }
        _ => Err(GatewayError::new(
            ErrorKind::RouteNotFound,
            format!("no route for {} /v1{}", r.method, r.path),
        )),
    }
}

/// `POST /v1/files`: a form with `file` and `purpose`.
fn upload(store: &LocalFiles, r: &FilesRequest) -> Result<Response, GatewayError> {
    let boundary = r
        .content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(sluice_core::media::boundary)
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::UnsupportedMediaType,
                "upload files as multipart/form-data with 'file' and 'purpose'",
            )
        })?;
    let parts = sluice_core::media::parts(&r.body, boundary)?;
    let file = parts
        .iter()
        .find(|p| p.name == "file" && p.filename.is_some());
    let Some(file) = file else {
        return Err(missing("file"));
    };
    let purpose = parts
        .iter()
        .find(|p| p.name == "purpose")
        .and_then(|p| std::str::from_utf8(&r.body[p.span.clone()]).ok())
        .ok_or_else(|| missing("purpose"))?;
    const PURPOSES: [&str; 7] = [
        "assistants",
        "batch",
        "fine-tune",
        "vision",
        "user_data",
        "evals",
        "batch_output",
    ];
    if !PURPOSES.contains(&purpose) {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            format!(
                "unknown purpose '{purpose}' (one of {})",
                PURPOSES.join(", ")
            ),
        )
        .with_param("purpose"));
    }
    let filename = file.filename.as_deref().unwrap_or("upload");
    let data = r.body.slice(file.span.clone());
    let meta =
        store
            .inner
            .lock()
            .expect("files lock")
            .add_file(filename, purpose, data, r.key.clone())?;
    Ok(axum::Json(meta).into_response())
}

/// A stored batch, visible to its owner.
pub(super) fn keep_batch(store: &LocalFiles, object: Value, owner: Option<Arc<str>>) -> String {
    let mut s = store.inner.lock().expect("files lock");
    let id = s.id("batch_");
    let mut object = object;
    object["id"] = json!(id);
    // The oldest finished batches go first when there are too many.
    while s.batches.len() >= MAX_BATCHES {
        let Some(k) = s.batches.keys().next().cloned() else {
            break;
        };
        s.batches.remove(&k);
    }
    s.batches.insert(
        id.clone(),
        StoredBatch {
            object,
            owner,
            cancel: false,
        },
    );
    id
}

/// OpenAI's list page: `limit` (default 20, at most 100) after `after`.
fn list(items: impl Iterator<Item = Value>, query: Option<&str>) -> Response {
    let limit = query_param(query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let after = query_param(query, "after");
    let mut items = items.skip_while(|v| after.as_deref().is_some_and(|a| v["id"] != a));
    if after.is_some() {
        items.next(); // the `after` item itself
    }
    let mut data: Vec<Value> = items.take(limit + 1).collect();
    let has_more = data.len() > limit;
    data.truncate(limit);
    let first = data.first().map(|v| v["id"].clone());
    let last = data.last().map(|v| v["id"].clone());
    axum::Json(
        json!({"object": "list", "data": data, "first_id": first, "last_id": last,
        "has_more": has_more}),
    )
    .into_response()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

pub(super) fn not_found(what: &str, id: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::ObjectNotFound,
        format!("no {what} with id '{id}'"),
    )
}

fn missing(field: &'static str) -> GatewayError {
    GatewayError::new(
        ErrorKind::InvalidRequest,
        format!("missing required field '{field}'"),
    )
    .with_param(field)
}
