//! The admin HTTP listener of every process: `/metrics` (Prometheus text), `/livez`
//! (the process runs) and `/readyz` (its services can serve: every registered check
//! passes), for Prometheus, Kubernetes probes and `hx probe`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use tokio::net::TcpListener;

use crate::ServiceContext;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What must answer for this process to be ready.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<(String, Check)>>>,
}

impl Readiness {
    pub fn add<F>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.checks.lock().expect("readiness lock").push((name.into(), Arc::new(check)));
    }

    /// Runs every check; the names of the failing ones, with why.
    pub async fn failing(&self) -> Vec<String> {
        let checks: Vec<(String, Check)> = self.checks.lock().expect("readiness lock").clone();
        let runs = checks.into_iter().map(|(name, check)| async move {
            match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(format!("{name}: {why}")),
                Err(_) => Some(format!("{name}: timed out")),
            }
        });
        futures::future::join_all(runs).await.into_iter().flatten().collect()
    }
}

pub fn router(ctx: &ServiceContext) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ctx.clone())
}

/// Serves the admin routes on `listener` until the context shuts down.
pub fn spawn(ctx: &ServiceContext, listener: TcpListener) {
    let app = router(ctx);
    let shutdown = ctx.shutdown.clone();
    ctx.tasks.spawn(async move {
        if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
            tracing::error!(%error, "admin listener failed");
        }
    });
}

async fn metrics(State(ctx): State<ServiceContext>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, crate::metrics::Metrics::CONTENT_TYPE)], ctx.metrics.render())
}

async fn readyz(State(ctx): State<ServiceContext>) -> (StatusCode, String) {
    let failing = ctx.readiness.failing().await;
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{}\n", failing.join("\n")))
    }
}
