//! The `echo` service's endpoint: an h2c (prior knowledge) server on one
//! thread, as each HTTP/1.1 endpoint is an nginx with one worker. It answers
//! `GET /small` with its name, and the unary gRPC call with the request's
//! message and `grpc-status: 0` in the trailers; every answer carries
//! `x-endpoint: NAME`. Run by `laneway-bench h2-backend` inside a pod.

use std::{convert::Infallible, future::Ready, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::WithTrailers};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::Incoming,
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http2,
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::{GRPC_CONTENT_TYPE, GRPC_PATH, SMALL_PATH, is_grpc_message};

/// An answer: a body, then trailers for gRPC.
type Answer = WithTrailers<Full<Bytes>, Ready<Option<Result<HeaderMap, Infallible>>>>;

/// What every answer of this endpoint carries.
#[derive(Clone)]
struct Endpoint {
    /// `x-endpoint`.
    name: HeaderValue,
    /// The small answer: the name and a newline.
    small: Bytes,
}

/// Serves h2c on `listen` as endpoint `name` until killed.
pub fn serve(listen: SocketAddr, name: &str) -> anyhow::Result<()> {
    let endpoint = Endpoint {
        name: HeaderValue::from_str(name)?,
        small: Bytes::from(format!("{name}\n")),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, endpoint.clone()));
                // A client going away mid-connection is not this server's
                // failure; the load generator reports its own errors.
                let _ = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// The answer to one stream.
async fn answer(
    request: Request<Incoming>,
    endpoint: Endpoint,
) -> Result<Response<Answer>, hyper::Error> {
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(GRPC_CONTENT_TYPE.as_bytes()));
    let (status, body, grpc_status) = match (request.method(), request.uri().path(), grpc) {
        (&Method::GET, SMALL_PATH, false) => (StatusCode::OK, endpoint.small, None),
        (&Method::POST, GRPC_PATH, true) => {
            let message = request.into_body().collect().await?.to_bytes();
            if is_grpc_message(&message) {
                (StatusCode::OK, message, Some("0"))
            } else {
                // INTERNAL, with no message: a client counting answered
                // bytes sees it.
                (StatusCode::OK, Bytes::new(), Some("13"))
            }
        }
        _ => (StatusCode::NOT_FOUND, Bytes::new(), None),
    };
    let trailers = grpc_status.map(|code| {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(code));
        Ok(trailers)
    });
    let mut response = Response::new(Full::new(body).with_trailers(std::future::ready(trailers)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("x-endpoint", endpoint.name);
    if grpc {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    }
    Ok(response)
}
