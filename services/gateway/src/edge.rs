//! The edge of the REST API: what every request passes through before and after its
//! route, and the listener itself.
//!
//! Budgets at the edge, from the socket inwards:
//! - connections: at most `max_connections` held at once; beyond it the listener stops
//!   accepting and the kernel's backlog holds the rest (no memory of ours);
//! - time to a request head: `header_timeout_secs` from the moment a connection waits for
//!   one (hyper restarts this timer when a kept-alive connection goes idle, so it also
//!   closes idle connections); a TLS handshake has the same bound;
//! - a body: `idle_timeout_secs` between two of its chunks (a body that stops arriving
//!   fails the request with 400 instead of holding the connection);
//! - requests in flight: `concurrency_limit`; beyond it 503 `overloaded` at once;
//! - time to a response head: `request_timeout_secs`, then 504 `timeout`. Bodies that
//!   stream (server-sent events, streamed LLM answers) are not cut by it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use helix_core::{Error, ErrorKind};
use helix_runtime::config::{DeployEnv, GatewayConfig};
use helix_runtime::metrics::{Metrics, observe_http};
use http::Method;
use http::header::{self, HeaderName, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::{AppState, error};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-sent `x-request-id` kept; a longer one is replaced, never echoed or logged.
const MAX_REQUEST_ID: usize = 128;

/// Health checks in flight at once. They bypass the global limit so that an overloaded
/// gateway still answers its probes (an orchestrator that saw them fail would restart or
/// drain a gateway that is merely busy, adding to the overload), but each one asks every
/// service and the database, so they have a budget of their own: a flood of unkeyed
/// `/health` calls cannot become the overload itself.
const HEALTH_CONCURRENCY: usize = 64;

/// The middleware around every route, outermost first:
/// - bound the request id: a client's `x-request-id` is dropped unless short and plain,
///   before the next layer sets one, so nothing below ever sees a hostile value;
/// - request id: set before anything logs, so every line of a request carries it;
/// - trace: one span per request with method, path, request id, client address and (once
///   auth has checked it) `key_id`, continuing the caller's trace when it sends
///   `traceparent`; the response's log line is inside it;
/// - metrics: counts and latency by route pattern and status, errors and shed requests
///   included;
/// - propagate request id: echo `x-request-id` on every response, errors included;
/// - security headers: outside everything that can answer on its own (CORS preflights,
///   load shedding, timeouts, panics), so every answer carries them;
/// - CORS: outside the auth `route_layer`, since a preflight carries no key, and outside
///   load shedding so that a browser can read a 503 or 504;
/// - catch panic: a bug answers 500 JSON instead of dropping the connection;
/// - load shedding: `concurrency_limit` requests in flight, 503 beyond it, never a queue;
/// - request timeout: on the time to the response head, 504 JSON;
/// - body timeout: a body that stops arriving fails the request instead of holding it;
/// - body limit: enforced while reading, so an oversized body is never buffered whole.
pub fn layers(routes: Router<AppState>, config: &GatewayConfig, metrics: Arc<Metrics>) -> Router<AppState> {
    let admission = Admission {
        api: Arc::new(Semaphore::new(config.concurrency_limit)),
        health: Arc::new(Semaphore::new(HEALTH_CONCURRENCY)),
    };
    let request_timeout = Duration::from_secs(config.request_timeout_secs);
    let hsts = (config.tls_cert.is_some()).then(|| {
        SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        )
    });
    routes.layer(
        ServiceBuilder::new()
            .map_request(drop_unfit_request_id)
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &http::Request<_>| {
                        let id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                        let span = tracing::info_span!(
                            "http",
                            method = %request.method(),
                            path = %request.uri().path(),
                            request_id = id,
                            client_ip = tracing::field::Empty,
                            key_id = tracing::field::Empty,
                            otel.kind = "server",
                        );
                        if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
                            span.record("client_ip", tracing::field::display(peer.ip()));
                        }
                        helix_telemetry::follow_headers(&span, request.headers());
                        span
                    })
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
            )
            .layer(axum::middleware::from_fn_with_state(metrics, observe_http))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(SetResponseHeaderLayer::overriding(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
            .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
            .layer(SetResponseHeaderLayer::overriding(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            ))
            // Every answer is either a key's data or the live state of the system: no
            // cache may keep it. A route that chose its own (server-sent events) keeps it.
            .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .option_layer(hsts)
            .layer(cors(config))
            .layer(CatchPanicLayer::custom(|_| {
                error::ApiError(Error::internal("the gateway failed on this request")).into_response()
            }))
            .layer(axum::middleware::from_fn_with_state(admission, admit))
            .layer(axum::middleware::from_fn_with_state(request_timeout, time_to_head))
            .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(config.idle_timeout_secs)))
            .layer(DefaultBodyLimit::max(config.max_body_bytes)),
    )
}

/// Browsers may call the API from any origin in development (without credentials: the
/// key travels in a header the page sets, never in a cookie), and only from
/// `cors_origins` in production.
fn cors(config: &GatewayConfig) -> CorsLayer {
    let origins = match config.env {
        DeployEnv::Development => AllowOrigin::any(),
        DeployEnv::Production => AllowOrigin::list(config.cors_origins.iter().filter_map(|origin| {
            let value = HeaderValue::from_str(origin.trim_end_matches('/')).ok();
            if value.is_none() {
                tracing::warn!(origin, "ignoring a CORS origin that is not a header value");
            }
            value
        })),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("x-api-key"), REQUEST_ID])
        .expose_headers([
            REQUEST_ID,
            header::RETRY_AFTER,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
        ])
        .max_age(Duration::from_secs(600))
}

/// Removes a client's `x-request-id` unless it is one value of at most 128 bytes of
/// `[A-Za-z0-9._:-]`; the next layer then makes a UUID. A hostile value would otherwise
/// be echoed and written into every log line of the request.
fn drop_unfit_request_id<B>(mut request: http::Request<B>) -> http::Request<B> {
    let mut values = request.headers().get_all(REQUEST_ID).iter();
    let fit = match (values.next(), values.next()) {
        (Some(value), None) => request_id_is_fit(value.as_bytes()),
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !fit {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

fn request_id_is_fit(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[derive(Clone)]
struct Admission {
    api: Arc<Semaphore>,
    health: Arc<Semaphore>,
}

/// Load shedding: a request runs only with a free slot and is answered 503 at once
/// otherwise, so overload costs a refusal, not a queue that grows until memory or every
/// client's patience runs out. The slot is held until the response head, like the
/// request timeout: a long stream does not count against the limit once it has begun.
async fn admit(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    let slots = match request.uri().path() {
        "/health" | "/ready" => &admission.health,
        _ => &admission.api,
    };
    let Ok(_slot) = slots.try_acquire() else {
        let mut response = error::ApiError(Error::new(
            ErrorKind::Unavailable,
            "overloaded",
            "the gateway is at capacity; retry shortly",
        ))
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}

/// Bounds the time to the response head. The body is not covered, so server-sent events
/// and streamed answers run as long as they need once they have started.
async fn time_to_head(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::ApiError(Error::new(
            ErrorKind::Timeout,
            "timeout",
            format!("no answer within {} s", limit.as_secs()),
        ))
        .into_response(),
    }
}

/// Serves the REST API on `listener` until `shutdown`; requests in flight finish first,
/// for up to `request_timeout_secs`: a stream still open then (server-sent events follow
/// an execution as long as it runs) is cut rather than holding the process up.
///
/// HTTP/1.1 through hyper directly rather than `axum::serve`, which has no header
/// timeout. Every request carries `ConnectInfo<SocketAddr>` (auth and audit read the
/// client's address from it). With `tls_cert` and `tls_key` set it speaks HTTPS only.
pub async fn serve_http(
    listener: TcpListener,
    http: Router,
    config: &GatewayConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let header_timeout = Duration::from_secs(config.header_timeout_secs);
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    // Kept to be aborted if the drain at shutdown runs out; a wrapper future per
    // connection instead would cost every held connection kilobytes.
    let mut connections = tokio::task::JoinSet::new();
    let mut make_service = http.into_make_service_with_connect_info::<SocketAddr>();
    loop {
        // A slot first, then a connection: at the cap nothing is accepted, and waiting
        // clients sit in the kernel's backlog rather than in our memory.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // out of file descriptors or a connection reset before accept: pause
                    // instead of spinning, then go on
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // small responses must not wait for a delayed ACK (Nagle)
        let _ = tcp.set_nodelay(true);
        let Ok(service) = make_service.call(peer).await;
        let service = TowerToHyperService::new(service.map_request(|request: http::Request<_>| request.map(Body::new)));
        let builder = builder.clone();
        // taken now: shutdown waits for this connection, even while its TLS handshake runs
        let watcher = graceful.watcher();
        let tls = tls.clone();
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _slot = slot;
            match tls {
                None => {
                    let _ = watcher.watch(builder.serve_connection(TokioIo::new(tcp), service).into_owned()).await;
                }
                Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ =
                            watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, %peer, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    let drain = Duration::from_secs(config.request_timeout_secs);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::info!(after = ?drain, "cutting the connections still open at shutdown");
        connections.abort_all();
    }
    Ok(())
}

/// The rustls acceptor for a PEM certificate chain and private key; HTTP/1.1 by ALPN.
fn tls_acceptor(cert: &Path, key: &Path) -> std::io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, path: &Path, error: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what} {}: {error}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("tls certificate", cert, &e))?;
    if certs.is_empty() {
        return Err(invalid("tls certificate", cert, &"no certificate in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("tls key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private))
        .map_err(|e| invalid("tls certificate and key", cert, &e))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
