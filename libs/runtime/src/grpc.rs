//! gRPC serving and connecting, the same for every service: health
//! (`grpc.health.v1`) and reflection come with every server.
//!
//! Services in one process reach each other through the in-process link: the caller's
//! tonic client hands its gRPC request (protobuf body, gRPC framing and status) straight
//! to this process's tonic router, without a socket or an HTTP/2 connection.
//!
//! Calls over TCP carry the fleet token (`authorization: Bearer`), which every server
//! demands on its TCP listener ([`fleet_token`] says where it comes from). The
//! in-process link needs none: it never leaves the process.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::middleware::Next;
use futures::Stream;
use futures::future::BoxFuture;
use helix_core::ErrorKind;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::config::Secret;
use crate::metrics::{GrpcLabels, Metrics, code_name, observe_grpc};
use crate::{Error, HelixConfig, Result};

/// A connection to a service's gRPC API, over the network or in-process; what every
/// generated client is built on (`StorageServiceClient<GrpcChannel>`).
/// Failures to reach the service are already gRPC statuses (UNAVAILABLE, DEADLINE_EXCEEDED).
pub type GrpcChannel = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, tonic::Status>;

/// The endpoint value meaning "the service runs in this process": see [`LocalLink`].
pub const IN_PROCESS: &str = "in-process";

/// The in-process link: the gRPC router of this process, bound once it is built.
#[derive(Clone, Debug, Default)]
pub struct LocalLink {
    router: Arc<OnceLock<Routes>>,
}

impl LocalLink {
    /// Makes `router` the target of every channel of this link, made before or after.
    pub fn bind(&self, router: Routes) {
        let _ = self.router.set(router);
    }

    fn channel(&self, request_timeout: Duration) -> GrpcChannel {
        let local = LocalService { router: self.router.clone() };
        BoxCloneSyncService::new(tower::timeout::Timeout::new(local, request_timeout).map_err(|error: BoxError| {
            match error.downcast::<tonic::Status>() {
                Ok(status) => *status,
                Err(error) if error.is::<tower::timeout::error::Elapsed>() => {
                    tonic::Status::deadline_exceeded("the call took longer than the request timeout")
                }
                Err(error) => tonic::Status::from_error(error),
            }
        }))
    }
}

#[derive(Clone)]
struct LocalService {
    router: Arc<OnceLock<Routes>>,
}

impl Service<http::Request<Body>> for LocalService {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let router = self.router.get().cloned();
        Box::pin(async move {
            let router =
                router.ok_or_else(|| Box::new(tonic::Status::unavailable("the local grpc server is not up yet")))?;
            let response = router.oneshot(request).await.map_err(|never: Infallible| match never {})?;
            Ok(response)
        })
    }
}

/// A process's gRPC router: its services plus health and reflection.
pub struct GrpcRouter {
    routes: Routes,
    reporter: HealthReporter,
    services: Vec<&'static str>,
}

impl GrpcRouter {
    /// Adds health (reporting `services` SERVING), reflection, and per-call spans and
    /// metrics to `routes`.
    pub async fn new(routes: Routes, services: &[&'static str], metrics: Arc<Metrics>) -> Result<Self> {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in services {
            reporter.set_service_status(*name, ServingStatus::Serving).await;
        }
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(helix_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Config(format!("grpc reflection: {e}")))?;
        let routes = routes.add_service(health).add_service(reflection);
        let observed = routes.into_axum_router().layer(axum::middleware::from_fn_with_state(metrics, observe_grpc));
        Ok(Self { routes: Routes::from(observed), reporter, services: services.to_vec() })
    }

    /// The router, for the in-process link.
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }

    /// Serves on `listener` until `shutdown` is cancelled, then finishes the calls in
    /// flight. Every call but health must carry `token`; at most `max_connections`
    /// connections are held at once.
    pub async fn serve(
        self,
        listener: TcpListener,
        token: &Secret,
        max_connections: usize,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let Self { routes, reporter, services } = self;
        // Outside the metrics layer: a caller without the token may not grow the
        // per-method series with paths of its choosing.
        let auth = Arc::new(FleetAuth { digest: Sha256::digest(token.expose().as_bytes()).into() });
        let routes =
            Routes::from(routes.into_axum_router().layer(axum::middleware::from_fn_with_state(auth, require_token)));
        Server::builder()
            // a peer that stops answering pings is dropped (its connection slot freed)
            // within 50 s instead of being held until the kernel gives up on it
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(admitted(listener, max_connections), async move {
                shutdown.cancelled().await;
                // tell health checkers first, so balancers stop sending while calls drain
                for name in services {
                    reporter.set_service_status(name, ServingStatus::NotServing).await;
                }
            })
            .await?;
        Ok(())
    }
}

/// A channel to a service's gRPC endpoint: a URL, or [`IN_PROCESS`] with the link of
/// this process. It connects on first use and reconnects by itself, so a caller may be
/// created before the service it calls is up. A call that takes longer than
/// `request_timeout` fails DEADLINE_EXCEEDED. Every call carries `token`, the fleet
/// token, when there is one.
pub fn channel(
    url: &str,
    local: Option<&LocalLink>,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
    token: Option<&Secret>,
) -> Result<GrpcChannel> {
    let authorization = token.map(bearer).transpose()?;
    let inner = match (url, local) {
        (IN_PROCESS, Some(link)) => link.channel(request_timeout),
        (IN_PROCESS, None) => {
            return Err(Error::Config(format!(
                "endpoint {IN_PROCESS:?} names this process, which does not run that service"
            )));
        }
        _ => {
            let channel = endpoint(url, request_timeout)?.connect_lazy();
            BoxCloneSyncService::new(channel.map_err(|error| tonic::Status::from_error(Box::new(error))))
        }
    };
    Ok(BoxCloneSyncService::new(ObservedChannel { inner, metrics, authorization }))
}

/// A [`channel`] to `url` that is connected when it returns, so an error means the
/// service cannot be reached (yet). It reconnects by itself afterwards.
pub async fn connect(
    url: &str,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
    token: Option<&Secret>,
) -> Result<GrpcChannel> {
    let authorization = token.map(bearer).transpose()?;
    let channel = endpoint(url, request_timeout)?.connect().await?;
    let inner = BoxCloneSyncService::new(channel.map_err(|error| tonic::Status::from_error(Box::new(error))));
    Ok(BoxCloneSyncService::new(ObservedChannel { inner, metrics, authorization }))
}

fn endpoint(url: &str, request_timeout: Duration) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::Config(format!("invalid endpoint {url:?}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(request_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30)))
}

/// The `authorization` value of a call carrying `token`; marked sensitive, so it is
/// never printed and never indexed by HPACK.
fn bearer(token: &Secret) -> Result<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose()))
        .map_err(|_| Error::Config("the fleet token must be visible ASCII without spaces".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Carries the caller's trace context and the fleet token in the call's metadata and
/// counts failed calls.
#[derive(Clone)]
struct ObservedChannel {
    inner: GrpcChannel,
    metrics: Arc<Metrics>,
    authorization: Option<HeaderValue>,
}

impl Service<http::Request<Body>> for ObservedChannel {
    type Response = http::Response<Body>;
    type Error = tonic::Status;
    type Future = BoxFuture<'static, Result<Self::Response, tonic::Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        helix_telemetry::inject_headers(request.headers_mut());
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
        }
        let method = request.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()),
                Err(status) => Some(status.code() as i32),
            };
            if let Some(code) = code.filter(|c| *c != 0) {
                metrics
                    .grpc_client_errors
                    .get_or_create(&GrpcLabels { method, code: code_name(code).to_owned() })
                    .inc();
            }
            result
        })
    }
}

/// The file under `HELIX_HOME` holding the fleet token of processes sharing that home.
pub const TOKEN_FILE: &str = "grpc.token";

/// The fleet token's name in the vault (and in the environment).
const VAULT_TOKEN: &str = "HELIX_GRPC_TOKEN";

/// Seconds a new connection has to send the HTTP/2 connection preface before it is
/// closed: a connection that never speaks would otherwise hold a slot for ever.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// The fleet token of this process: `grpc.token` (`HELIX_GRPC_TOKEN`), else the file
/// `grpc.token_file` names (`HELIX_GRPC_TOKEN_FILE`, a mounted Secret; trimmed), else
/// `HELIX_GRPC_TOKEN` in the vault of `credentials`, else `HELIX_HOME/grpc.token`,
/// generated by whichever process of that home comes first and read by the rest
/// (`hx up`, `hx serve` and `hx worker` on one machine).
///
/// `fleet_addr` is where this process serves one part of a fleet (`hx serve`). Its
/// peers may run on other machines with homes of their own, so beyond loopback a
/// token must be configured: a generated one would differ on every machine, and every
/// call between them would fail long after start.
pub fn fleet_token(
    config: &HelixConfig,
    fleet_addr: Option<SocketAddr>,
    credentials: &helix_vault::Credentials,
) -> Result<Secret> {
    let grpc = &config.grpc;
    // the environment's HELIX_GRPC_TOKEN is `grpc.token` already: only the vault is left
    let vaulted = || {
        let value = credentials.vault()?.get(VAULT_TOKEN)?;
        let value = secrecy::ExposeSecret::expose_secret(&value).trim().to_owned();
        Some(Secret::new(value)).filter(|t| !t.expose().is_empty())
    };
    let token = if let Some(token) = &grpc.token {
        token.clone()
    } else if let Some(path) = &grpc.token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read the fleet token file {} (HELIX_GRPC_TOKEN_FILE): {e}", path.display()))
        })?;
        Secret::new(text.trim())
    } else if let Some(token) = vaulted() {
        token
    } else if let Some(addr) = fleet_addr.filter(|a| !a.ip().is_loopback()) {
        return Err(Error::Config(format!(
            "gRPC is served on {addr}, beyond this machine, without a fleet token: set HELIX_GRPC_TOKEN or \
             HELIX_GRPC_TOKEN_FILE, or store {VAULT_TOKEN} in the vault, with the same token on every process \
             of the fleet"
        )));
    } else {
        home_token(&config.home)?
    };
    let valid = token.expose().len() >= 16 && token.expose().bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(Error::Config(
            "the fleet token (HELIX_GRPC_TOKEN, HELIX_GRPC_TOKEN_FILE or the vault's HELIX_GRPC_TOKEN) must be \
             at least 16 visible ASCII characters without spaces"
                .into(),
        ));
    }
    Ok(token)
}

fn home_token(home: &Path) -> Result<Secret> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    use rand::Rng;

    let path = home.join(TOKEN_FILE);
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|text| Secret::new(text.trim()))
            .map_err(|e| Error::Config(format!("cannot read the fleet token {}: {e}", path.display())))
    };
    if path.exists() {
        return read(&path);
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(home)?;
    let token: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(48).map(char::from).collect();
    // Written whole under a name of its own, then linked into place: a reader never
    // sees half a token, and of two processes starting at once exactly one wins.
    let temp = home.join(format!(".{TOKEN_FILE}.{:016x}", rand::rng().random::<u64>()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| file.write_all(token.as_bytes()).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::hard_link(&temp, &path));
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the fleet token");
            Ok(Secret::new(token))
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => read(&path),
        Err(error) => Err(Error::Config(format!("cannot write the fleet token {}: {error}", path.display()))),
    }
}

/// What a call must present: the SHA-256 of the fleet token, compared in constant time
/// with the digest of what the caller sent.
struct FleetAuth {
    digest: [u8; 32],
}

async fn require_token(
    State(auth): State<Arc<FleetAuth>>,
    request: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    // Kubernetes' gRPC probes (and grpc_health_probe) cannot send a token, and health
    // tells only SERVING or NOT_SERVING: nothing worth keeping from anyone.
    if request.uri().path().starts_with("/grpc.health.v1.Health/") {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|v| v.get(..7).filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer ")).map(|_| &v[7..]));
    let message = match presented {
        Some(token) if bool::from(Sha256::digest(token).as_slice().ct_eq(&auth.digest)) => {
            return next.run(request).await;
        }
        Some(_) => "the fleet token does not match this server's (HELIX_GRPC_TOKEN, HELIX_GRPC_TOKEN_FILE)",
        None => "calls need the fleet token: authorization: Bearer <HELIX_GRPC_TOKEN>",
    };
    tracing::debug!(method = request.uri().path(), "grpc call without the fleet token refused");
    let status = tonic::Status::from(helix_core::Error::new(ErrorKind::Unauthenticated, "unauthenticated", message));
    status.into_http()
}

/// The listener's connections, each holding one of `max_connections` permits until it
/// closes. A permit is taken before accepting, so beyond the cap connections wait in
/// the kernel's backlog instead of costing memory here.
fn admitted(listener: TcpListener, max_connections: usize) -> impl Stream<Item = io::Result<Admitted<TcpStream>>> {
    let permits = Arc::new(Semaphore::new(max_connections));
    futures::stream::unfold((listener, permits), |(listener, permits)| async move {
        let permit = permits.clone().acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // Nagle's algorithm would hold small responses back for a delayed ACK.
                    let _ = stream.set_nodelay(true);
                    return Some((Ok(Admitted::new(stream, permit)), (listener, permits)));
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => {
                    // out of file descriptors, every accept fails until one closes: pause, don't spin
                    tracing::warn!(%error, "grpc listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// An accepted connection: its permit, and until the client has sent the HTTP/2
/// preface, the deadline for it.
struct Admitted<IO> {
    io: IO,
    preface: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
    _permit: OwnedSemaphorePermit,
}

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`
const PREFACE_LEN: usize = 24;

impl<IO> Admitted<IO> {
    fn new(io: IO, permit: OwnedSemaphorePermit) -> Self {
        Self { io, preface: Some((PREFACE_LEN, Box::pin(tokio::time::sleep(PREFACE_TIMEOUT)))), _permit: permit }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some((left, deadline)) = &mut this.preface {
            match &read {
                Poll::Ready(Ok(())) => match left.checked_sub(buf.filled().len() - before) {
                    Some(rest) if rest > 0 => *left = rest,
                    _ => this.preface = None,
                },
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no http/2 preface in time")));
                }
                _ => {}
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Admitted<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// (bytes the client sends, then waits; whether the server's read ends in TimedOut)
    #[tokio::test(start_paused = true)]
    async fn a_connection_has_ten_seconds_for_the_preface() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for (sent, timed_out) in [(&preface[..0], true), (&preface[..23], true), (&preface[..], false)] {
            let (mut client, server) = tokio::io::duplex(64);
            let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
            let mut server = Admitted::new(server, permit);
            client.write_all(sent).await.unwrap();
            let mut got = vec![0; sent.len()];
            server.read_exact(&mut got).await.unwrap();
            let started = tokio::time::Instant::now();
            let mut more = [0; 1];
            let read = tokio::time::timeout(Duration::from_secs(60), server.read(&mut more)).await;
            match read {
                Ok(Err(error)) => {
                    assert!(timed_out, "{} bytes: {error}", sent.len());
                    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
                    assert_eq!(started.elapsed(), PREFACE_TIMEOUT, "{} bytes", sent.len());
                }
                Err(_) => assert!(!timed_out, "{} bytes: no timeout", sent.len()),
                Ok(Ok(n)) => panic!("{} bytes: read {n}", sent.len()),
            }
        }
    }

    /// (configured token, token file content, serving address, expected: Ok(token) or
    /// the error's mention)
    #[test]
    fn the_fleet_token_comes_from_config_file_or_home() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mounted");
        std::fs::write(&file, "from-the-mounted-secret-0123\n").unwrap();
        let lan: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let none = helix_vault::Credentials::none();
        let check_with = |token: Option<&str>, token_file: bool, addr: Option<SocketAddr>, credentials| {
            let mut config = HelixConfig { home: dir.path().join("home"), ..HelixConfig::default() };
            config.grpc.token = token.map(Secret::new);
            config.grpc.token_file = token_file.then(|| file.clone());
            fleet_token(&config, addr, credentials).map(|t| t.expose().to_owned()).map_err(|e| e.to_string())
        };
        let check = |token, token_file, addr| check_with(token, token_file, addr, &none);
        let configured = "configured-token-0123456789";
        assert_eq!(check(Some(configured), true, Some(lan)), Ok(configured.to_owned()));
        assert_eq!(check(None, true, Some(lan)), Ok("from-the-mounted-secret-0123".to_owned()));
        let refused = check(None, false, Some(lan)).unwrap_err();
        assert!(refused.contains("HELIX_GRPC_TOKEN_FILE"), "{refused}");
        assert!(check(Some("short"), false, None).unwrap_err().contains("at least 16"));

        // the vault's HELIX_GRPC_TOKEN comes after the configuration and the file, before
        // the refusal beyond loopback and the generated token
        let vault = helix_vault::Vault::open(&dir.path().join("vault-home"), &Default::default()).unwrap();
        vault.set("HELIX_GRPC_TOKEN", "from-the-vault-0123456789".into()).unwrap();
        let vaulted = helix_vault::Credentials::with_env(Some(Arc::new(vault)), |_| None);
        assert_eq!(check_with(Some(configured), false, Some(lan), &vaulted), Ok(configured.to_owned()));
        assert_eq!(check_with(None, true, Some(lan), &vaulted), Ok("from-the-mounted-secret-0123".to_owned()));
        assert_eq!(check_with(None, false, Some(lan), &vaulted), Ok("from-the-vault-0123456789".to_owned()));
        assert_eq!(check_with(None, false, None, &vaulted), Ok("from-the-vault-0123456789".to_owned()));
        assert!(!dir.path().join("home").join(TOKEN_FILE).exists(), "no token generated while the vault has one");

        // generated once, then read by every later process of the home
        let generated = check(None, false, Some(local)).unwrap();
        assert_eq!(generated.len(), 48);
        assert_eq!(check(None, false, None), Ok(generated.clone()));
        assert_eq!(check(None, false, Some(local)), Ok(generated));
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("home")), 0o700);
        assert_eq!(mode(&dir.path().join("home").join(TOKEN_FILE)), 0o600);
    }
}
