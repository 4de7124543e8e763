//! The Gateway service's methods, each as the HTTP API's request.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;
use sluice_core::request::Operation;
use sluice_grpc::codec::Codec;
use sluice_grpc::status::Status;
use sluice_grpc::{convert, pb};
use sluice_providers::tokens::TokenFormat;
use sluice_providers::translate::Wire;

use super::{Tail, head, status_only};
use crate::app::App;
use crate::proxy::{self, Inbound, InboundBody};

/// One call: the app, its codec and its metadata as API headers.
pub(super) struct Call {
    pub app: Arc<App>,
    pub codec: Codec,
    pub headers: HeaderMap,
}

/// Where a unary call goes.
enum Target {
    /// The proxy path, as this operation.
    Proxy(Operation),
    /// A local model.
    Predict,
}

/// Largest reply collected from the API to be re-encoded.
const REPLY_LIMIT: usize = 64 << 20;

impl Call {
    /// The request message: one frame within the body limit.
    async fn message<M>(&self, body: Body) -> Result<M, Status>
    where
        M: prost::Message + Default + DeserializeOwned,
    {
        let server = &self.app.snapshot.load().config.server;
        let (max, timeout) = (server.max_body_bytes, server.body_read_timeout);
        let bytes = crate::extract::read_body(&self.headers, body, max + 5, timeout)
            .await
            .map_err(|e| Status::new(sluice_grpc::status::Code::of_http(e.status()), e.message))?;
        self.codec.decode_unary(&bytes, max)
    }

    /// The API request of the call; its headers move into it (a call makes
    /// one request).
    fn inbound(&mut self, op: Operation, route: &'static str, json: Vec<u8>) -> Inbound {
        Inbound {
            op,
            route,
            headers: std::mem::take(&mut self.headers),
            body: InboundBody::Read(Bytes::from(json)),
            client: None,
        }
    }

    /// An API answer, whole: its body, or its status as the call's.
    async fn whole(resp: Response<Body>) -> Result<(HeaderMap, Bytes), (HeaderMap, Status)> {
        let (parts, body) = resp.into_parts();
        let bytes = match http_body_util::Limited::new(body, REPLY_LIMIT)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let s = Status::new(
                    sluice_grpc::status::Code::Unavailable,
                    format!("the answer could not be read: {e}"),
                );
                return Err((parts.headers, s));
            }
        };
        if !parts.status.is_success() {
            let s = Status::of_http(parts.status.as_u16(), &bytes);
            return Err((parts.headers, s));
        }
        Ok((parts.headers, bytes))
    }

    /// A unary reply: one message, then the status.
    fn reply<M: prost::Message + serde::Serialize>(
        &self,
        meta: &HeaderMap,
        m: &M,
    ) -> Response<Body> {
        let frame = self.codec.frame(m);
        let data = Body::from(frame);
        head(self.codec, meta).map(|()| Body::new(Tail::new(data)))
    }

    /// Runs a unary method: the request message as an API request to
    /// `target` (labelled `route`), the answer converted by `from_json`.
    async fn unary<Req, Rep>(
        mut self,
        body: Body,
        target: Target,
        route: &'static str,
        to_json: impl FnOnce(&Req) -> Result<Vec<u8>, Status>,
        from_json: impl FnOnce(&[u8]) -> Result<Rep, Status>,
    ) -> Response<Body>
    where
        Req: prost::Message + Default + DeserializeOwned,
        Rep: prost::Message + serde::Serialize,
    {
        let json = match self.message::<Req>(body).await.and_then(|r| to_json(&r)) {
            Ok(j) => j,
            Err(s) => return status_only(self.codec, &s, HeaderMap::new()),
        };
        let resp = match target {
            Target::Proxy(op) => {
                proxy::serve(self.app.clone(), self.inbound(op, route, json)).await
            }
            Target::Predict => {
                let mut req = http::Request::new(Body::from(json));
                *req.headers_mut() = std::mem::take(&mut self.headers);
                crate::predict::v1::predict(axum::extract::State(self.app.clone()), req).await
            }
        };
        match Self::whole(resp).await {
            Ok((meta, bytes)) => match from_json(&bytes) {
                Ok(m) => self.reply(&meta, &m),
                Err(s) => status_only(self.codec, &s, meta),
            },
            Err((meta, s)) => status_only(self.codec, &s, meta),
        }
    }

    pub async fn chat(self, body: Body) -> Response<Body> {
        self.unary::<pb::ChatRequest, _>(
            body,
            Target::Proxy(Operation::Chat),
            "/sluice.v1.Gateway/Chat",
            convert::chat_body,
            convert::chat_response,
        )
        .await
    }

    pub async fn embed(self, body: Body) -> Response<Body> {
        self.unary::<pb::EmbedRequest, _>(
            body,
            Target::Proxy(Operation::Embeddings),
            "/sluice.v1.Gateway/Embed",
            convert::embed_body,
            convert::embed_response,
        )
        .await
    }

    pub async fn predict(self, body: Body) -> Response<Body> {
        self.unary::<pb::PredictRequest, _>(
            body,
            Target::Predict,
            "/sluice.v1.Gateway/Predict",
            |r| Ok(convert::predict_body(r)),
            convert::predict_response,
        )
        .await
    }

    /// The chat as a stream of `TokenChunk` messages, framed on the request
    /// path as they are decoded from the upstream.
    pub async fn chat_stream(mut self, body: Body) -> Response<Body> {
        let json = match self
            .message::<pb::ChatRequest>(body)
            .await
            .and_then(|r| convert::chat_body(&r))
        {
            Ok(j) => j,
            Err(s) => return status_only(self.codec, &s, HeaderMap::new()),
        };
        let format = match self.codec {
            Codec::Proto => TokenFormat::GrpcProto,
            Codec::Json => TokenFormat::GrpcJson,
        };
        let mut inbound = self.inbound(Operation::Chat, "/sluice.v1.Gateway/ChatStream", json);
        inbound.client = Some(Wire::Tokens(format));
        let resp = proxy::serve(self.app.clone(), inbound).await;
        if !resp.status().is_success() {
            return match Self::whole(resp).await {
                Err((meta, s)) => status_only(self.codec, &s, meta),
                Ok((meta, _)) => status_only(
                    self.codec,
                    &Status::new(sluice_grpc::status::Code::Internal, "unexpected answer"),
                    meta,
                ),
            };
        }
        let (parts, body) = resp.into_parts();
        head(self.codec, &parts.headers).map(|()| Body::new(Tail::new(body)))
    }
}
