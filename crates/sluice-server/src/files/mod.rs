//! `/v1/files` and `/v1/batches`: passed through to the provider `[files]`
//! names (an OpenAI-compatible one), or — when that is the mock — kept in
//! memory with batches run by the gateway itself, each line through the
//! same request path as a client's request.

mod batch;
mod local;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, Method};
use http_body_util::BodyExt;
use sluice_core::config::ProviderKind;
use sluice_core::{ErrorKind, GatewayError};

use crate::app::App;
use crate::proxy::Recorder;
use crate::proxy::intake::read_body;

pub use local::LocalFiles;

/// The files and batches routes.
pub fn routes(router: Router<Arc<App>>) -> Router<Arc<App>> {
    router
        .route("/v1/files", get(files).post(files))
        .route("/v1/files/{id}", get(files).delete(files))
        .route("/v1/files/{id}/content", get(files))
        .route("/v1/batches", get(batches).post(batches))
        .route("/v1/batches/{id}", get(batches))
        .route("/v1/batches/{id}/cancel", post(batches))
}

async fn files(State(app): State<Arc<App>>, req: Request) -> Response {
    serve(app, "/v1/files", req).await
}

async fn batches(State(app): State<Arc<App>>, req: Request) -> Response {
    serve(app, "/v1/batches", req).await
}

/// What the files API needs of a request.
pub(crate) struct FilesRequest {
    pub method: Method,
    /// The path after `/v1` (`/files/file-1/content`).
    pub path: String,
    pub query: Option<String>,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    pub key: Option<Arc<str>>,
    /// The client's credentials, for the requests a batch makes for it.
    pub auth: Vec<(http::HeaderName, HeaderValue)>,
}

async fn serve(app: Arc<App>, route: &'static str, req: Request) -> Response {
    let mut rec = Recorder::start(&app, route);
    let (parts, body) = req.into_parts();
    let access = app.access.load_full();
    let key = match crate::access::authenticate(&access, &parts.headers) {
        Ok(k) => k.map(|k| k.name.clone()),
        Err(e) => return rec.reply_error(&e),
    };
    rec.key = key.clone();
    let snap = app.snapshot.load_full();
    let Some(index) = snap.config.files.provider else {
        return rec.reply_error(&GatewayError::new(
            ErrorKind::UnsupportedOperation,
            format!("{route} needs a provider: set [files] provider to an OpenAI-compatible one"),
        ));
    };
    let provider = &snap.config.providers[index];
    rec.provider = provider.name.clone();
    let server = &snap.config.server;
    let body = match read_body(
        &parts.headers,
        body,
        server.max_upload_bytes,
        server.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return rec.reply_error(&e),
    };
    let path = parts.uri.path();
    if let Err(e) = safe_path(path) {
        return rec.reply_error(&e);
    }
    let auth = ["authorization", "x-api-key"]
        .into_iter()
        .filter_map(|n| {
            let v = parts.headers.get(n)?;
            Some((http::HeaderName::from_static(n), v.clone()))
        })
        .collect();
    let r = FilesRequest {
        method: parts.method,
        path: path.trim_start_matches("/v1").to_owned(),
        query: parts.uri.query().map(str::to_owned),
        content_type: parts.headers.get(http::header::CONTENT_TYPE).cloned(),
        body,
        key,
        auth,
    };
    let answer = if provider.kind == ProviderKind::Mock {
        local::serve(&app, r)
    } else {
        passthrough(&snap, index, r).await
    };
    match answer {
        Ok(resp) => {
            rec.set_status(resp.status().as_u16());
            rec.finish();
            resp
        }
        Err(e) => rec.reply_error(&e),
    }
}

/// Ids in paths are plain tokens: nothing that could climb out of the
/// upstream's `/files` or `/batches`.
fn safe_path(path: &str) -> Result<(), GatewayError> {
    let ok = path.split('/').all(|seg| {
        seg.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && seg != "."
            && seg != ".."
    });
    if ok {
        Ok(())
    } else {
        Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "ids are letters, digits, '_', '-' and '.'",
        ))
    }
}

/// The request as it came, to the OpenAI-compatible provider; its answer
/// streamed back with the provider's keys kept out of errors.
async fn passthrough(
    snap: &crate::app::Snapshot,
    index: usize,
    r: FilesRequest,
) -> Result<Response, GatewayError> {
    let upstream = &snap.upstreams[index];
    let (Some(endpoint), Some(client)) =
        (upstream.adapter.openai_endpoint(), upstream.client.as_ref())
    else {
        return Err(GatewayError::new(
            ErrorKind::Internal,
            "the files provider has no OpenAI endpoint",
        ));
    };
    let req = endpoint.passthrough(
        r.method,
        &r.path,
        r.query.as_deref(),
        r.content_type.as_ref(),
        r.body,
        None,
    )?;
    let timeout = snap.config.providers[index].timeout;
    let resp = tokio::time::timeout(timeout, sluice_providers::transport::send(client, req))
        .await
        .map_err(|_| {
            GatewayError::new(
                ErrorKind::UpstreamTimeout,
                format!("upstream did not respond within {} ms", timeout.as_millis()),
            )
        })??;
    let (head, incoming) = resp.into_parts();
    let body = if head.status.is_success() {
        Body::new(incoming)
    } else {
        // An error answer is small: scrubbed of the provider's keys.
        let bytes = http_body_util::Limited::new(incoming, 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Body::from(snap.scrubber.scrub_bytes(&bytes).into_owned())
    };
    let mut out = Response::new(body);
    *out.status_mut() = head.status;
    crate::proxy::copy_response_headers(&head.headers, out.headers_mut());
    Ok(out)
}
