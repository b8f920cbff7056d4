//! The tower log and the board: what the system has been doing, at a glance.
//!
//! `GET /tower` lists the most recent events (a bounded ring buffer fed by a live tail
//! of every `helix.*` subject); `GET /api/board` aggregates service health, event
//! counts, request counts and recent activity into one dashboard document.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use chrono::{DateTime, Utc};
use helix_events::{Envelope, EventBus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{Json, Query};

/// Events kept for `/tower`; the oldest go first.
pub const CAPACITY: usize = 1000;

#[derive(Default)]
pub struct TowerLog {
    inner: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    events: VecDeque<Arc<Envelope>>,
    seen: u64,
    by_type: BTreeMap<String, u64>,
}

impl TowerLog {
    fn record(&self, event: Arc<Envelope>) {
        let mut ring = self.inner.lock().expect("tower lock");
        ring.seen += 1;
        *ring.by_type.entry(event.r#type.clone()).or_default() += 1;
        if ring.events.len() == CAPACITY {
            ring.events.pop_front();
        }
        ring.events.push_back(event);
    }

    fn recent(&self, limit: usize) -> Vec<TowerEvent> {
        let ring = self.inner.lock().expect("tower lock");
        ring.events.iter().rev().take(limit).map(|event| TowerEvent::from(event.as_ref())).collect()
    }

    fn counts(&self) -> (u64, BTreeMap<String, u64>) {
        let ring = self.inner.lock().expect("tower lock");
        (ring.seen, ring.by_type.clone())
    }
}

/// Feeds the tower log from a live tail of every event until `shutdown`.
pub async fn follow(bus: Arc<dyn EventBus>, log: Arc<TowerLog>, shutdown: CancellationToken) {
    let mut events = match bus.tail("helix.>").await {
        Ok(events) => events,
        Err(error) => {
            tracing::warn!(%error, "tower log disabled: cannot tail the event bus");
            return;
        }
    };
    loop {
        tokio::select! {
            next = events.next() => match next {
                Some(Ok(delivery)) => log.record(delivery.envelope),
                Some(Err(error)) => tracing::debug!(%error, "tower log: event bus hiccup"),
                None => return,
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TowerEvent {
    pub id: String,
    /// the subject, e.g. `helix.node.created`
    pub r#type: String,
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    /// the trace this event belongs to, when traced
    pub traceparent: Option<String>,
    pub payload: Value,
}

impl From<&Envelope> for TowerEvent {
    fn from(e: &Envelope) -> Self {
        Self {
            id: e.id.to_string(),
            r#type: e.r#type.clone(),
            source: e.source.clone(),
            occurred_at: e.occurred_at,
            traceparent: e.trace.as_ref().map(|t| t.traceparent.clone()),
            payload: e.payload.clone(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TowerPage {
    /// newest first
    pub events: Vec<TowerEvent>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TowerParams {
    /// 1-1000, default 100
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/tower", tag = "observability", params(TowerParams),
    responses((status = 200, body = TowerPage)), security(("bearer" = [])))]
pub async fn tower(State(state): State<AppState>, Query(params): Query<TowerParams>) -> Json<TowerPage> {
    let limit = params.limit.unwrap_or(100).clamp(1, CAPACITY);
    Json(TowerPage { events: state.tower.recent(limit) })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Board {
    /// `ok` or `degraded`
    pub status: &'static str,
    /// every dependency of the gateway and what its check said
    pub services: BTreeMap<&'static str, String>,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: i64,
    /// events this gateway has seen since it started, in all and by type
    pub events_seen: u64,
    pub events_by_type: BTreeMap<String, u64>,
    /// the latest events, newest first
    pub recent: Vec<TowerEvent>,
}

#[utoipa::path(get, path = "/api/board", tag = "observability",
    responses((status = 200, body = Board)), security(("bearer" = [])))]
pub async fn board(State(state): State<AppState>) -> Json<Board> {
    let checks = crate::health::run_checks(&state).await;
    let status = if checks.values().all(|v| v == "ok") { "ok" } else { "degraded" };
    let (events_seen, events_by_type) = state.tower.counts();
    let now = Utc::now();
    Json(Board {
        status,
        services: checks,
        started_at: state.started_at,
        uptime_seconds: (now - state.started_at).num_seconds(),
        events_seen,
        events_by_type,
        recent: state.tower.recent(20),
    })
}
