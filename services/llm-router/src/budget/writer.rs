//! The budget's one writer task, and the allotments that keep most calls from waiting
//! for it.
//!
//! **Together.** Every write waiting — reservations that the allotments could not
//! cover, settlements, top-ups and allotments given back — is decided and written in
//! one transaction: the rows of the scopes involved are locked (`FOR UPDATE` on
//! PostgreSQL, in key order, `global` before every `key:`; on SQLite the one writer
//! connection), settlements and give-backs are applied first (they free money), then
//! each reservation in arrival order is admitted only if it fits under every cap of its
//! scopes, and each row gets one UPDATE of the sum. So 500 calls arriving at once cost
//! two commits, not 500, and the cap holds across replicas: every decision is made
//! under the rows' locks.
//!
//! **Allotments.** A reservation the database admits also sets aside, for this replica,
//! up to 1% of the scope's cap (never more than an eighth of what is left under it):
//! counted as reserved in the database like a call's reservation, and held in memory.
//! Later calls take their reservations from it without a database round trip, and when
//! it runs below half a top-up is written in the background. An allotment unused for a
//! second, of a past day, held when a cap changes, or of a scope where a call cost more
//! than it reserved, is given back. So the invariant is
//! unchanged — everything admitted is reserved in the database within the cap — while
//! the database leaves the call path; near the cap the allotments shrink to nothing and
//! every call is decided in the database again. The cost: a replica that dies keeps its
//! allotment counted until the day ends (at most 1% of the cap per scope), and a cap
//! lowered on another replica reaches this one at its next refresh (a few seconds), in
//! which it may still spend what it had set aside.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use helix_core::Result;
use helix_runtime::db::{self, Database, db_error, micros};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Budget, Refusal, Reservation, UsageRecord};

/// Budget writes one transaction takes at most.
const WRITE_TOGETHER: usize = 256;
/// An allotment is at most this part of its scope's cap...
const ALLOT_PART_OF_CAP: i64 = 100;
/// ...and of what is left under the cap.
const ALLOT_PART_OF_LEFT: i64 = 8;
/// An allotment unused this long goes back.
const ALLOT_IDLE: Duration = Duration::from_secs(1);

/// A write of the budget, waiting for the transaction it will share with the others
/// that arrived while the previous one committed.
pub(super) enum Write {
    Reserve(Reserve),
    Settle(Box<Settlement>),
    /// sets aside more for the scopes (with their caps), in the background
    TopUp {
        day: String,
        global_cap: i64,
        scopes: Vec<(String, i64)>,
    },
    /// gives back allotments taken out of the map (a cap changed)
    GiveBack(Vec<((String, String), i64)>),
}

pub(super) struct Reserve {
    pub day: String,
    pub micros: i64,
    /// (scope, its cap, the refusal when it does not fit), global first
    pub scopes: Vec<(String, i64, Refusal)>,
    pub answer: oneshot::Sender<Result<std::result::Result<(), Refusal>>>,
}

/// A reservation given back or replaced by a cost, and/or a call's record.
pub(super) struct Settlement {
    pub reservation: Option<Reservation>,
    pub record: Option<UsageRecord>,
}

/// What this replica has set aside per (scope, day).
pub(super) type Allotments = Arc<Mutex<HashMap<(String, String), Allotment>>>;

#[derive(Debug)]
pub(super) struct Allotment {
    /// reserved in the database, not yet taken by a call
    free: i64,
    /// the last top-up: one is asked for when `free` falls below half of it
    size: i64,
    used_at: Instant,
    topping_up: bool,
}

impl Allotment {
    fn empty(now: Instant) -> Self {
        Self { free: 0, size: 0, used_at: now, topping_up: false }
    }
}

/// Takes `micros` from this replica's allotments of every scope, when each has enough;
/// asks for a top-up of those running low.
pub(super) fn take_allotted(
    allotments: &Allotments,
    writes: &mpsc::UnboundedSender<Write>,
    scopes: &[(String, i64, Refusal)],
    day: &str,
    micros: i64,
) -> bool {
    let mut held = allotments.lock().unwrap_or_else(PoisonError::into_inner);
    let key = |scope: &str| (scope.to_owned(), day.to_owned());
    if !scopes.iter().all(|(scope, _, _)| held.get(&key(scope)).is_some_and(|a| a.free >= micros)) {
        return false;
    }
    let now = Instant::now();
    let mut low = Vec::new();
    for (scope, cap, _) in scopes {
        let Some(allotment) = held.get_mut(&key(scope)) else { continue };
        allotment.free -= micros;
        allotment.used_at = now;
        if allotment.free < allotment.size / 2 && !allotment.topping_up {
            allotment.topping_up = true;
            low.push((scope.clone(), *cap));
        }
    }
    drop(held);
    if !low.is_empty() {
        let _ = writes.send(Write::TopUp { day: day.to_owned(), global_cap: scopes[0].1, scopes: low });
    }
    true
}

/// Takes every allotment out of `held` (for giving back).
pub(super) fn take_all(allotments: &Allotments) -> Vec<((String, String), i64)> {
    let mut held = allotments.lock().unwrap_or_else(PoisonError::into_inner);
    held.drain().map(|(key, allotment)| (key, allotment.free)).collect()
}

/// Runs until the channel closes or, at shutdown, until what is waiting is written and
/// every allotment given back.
pub(super) async fn write_together(
    db: Database,
    allotments: Allotments,
    mut waiting: mpsc::UnboundedReceiver<Write>,
    shutdown: CancellationToken,
) {
    let writer = Writer { db, allotments };
    let mut batch = Vec::with_capacity(WRITE_TOGETHER);
    let mut sweep = tokio::time::interval(ALLOT_IDLE);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut give_back = Vec::new();
        tokio::select! {
            taken = waiting.recv_many(&mut batch, WRITE_TOGETHER) => if taken == 0 { break },
            _ = sweep.tick() => give_back = writer.idle_allotments(),
            () = shutdown.cancelled() => break,
        }
        writer.write(&mut batch, give_back).await;
    }
    // what the last calls left is written before the process ends
    waiting.close();
    while waiting.recv_many(&mut batch, WRITE_TOGETHER).await > 0 {
        writer.write(&mut batch, Vec::new()).await;
    }
    writer.write(&mut batch, take_all(&writer.allotments)).await;
}

struct Writer {
    db: Database,
    allotments: Allotments,
}

/// A `llm_budget_days` row as a batch sees it: read under its lock, then changed by
/// the batch's writes in memory and written back as one UPDATE of the differences.
#[derive(Default)]
struct DayRow {
    spent: i64,
    reserved: i64,
    spent_delta: i64,
    reserved_delta: i64,
    requests_delta: i64,
}

impl DayRow {
    fn add(&mut self, spent: i64, reserved: i64, requests: i64) {
        self.spent += spent;
        self.reserved += reserved;
        self.spent_delta += spent;
        self.reserved_delta += reserved;
        self.requests_delta += requests;
    }

    /// What may still be reserved under `cap`.
    fn left(&self, cap: i64) -> i64 {
        cap.saturating_sub(self.spent.saturating_add(self.reserved))
    }
}

type RowKey = (String, String);

/// What a batch decided, applied to the allotments once it committed.
#[derive(Default)]
struct Plan {
    decisions: Vec<std::result::Result<(), Refusal>>,
    /// set aside for this replica
    allotted: Vec<(RowKey, i64)>,
    /// taken out of the allotments to be given back: put back if the batch fails
    given_back: Vec<(RowKey, i64)>,
    /// scopes whose top-up this batch answered (or failed)
    topped_up: Vec<RowKey>,
}

impl Writer {
    /// Allotments unused for [`ALLOT_IDLE`], or of another day than today.
    fn idle_allotments(&self) -> Vec<(RowKey, i64)> {
        let today = super::today();
        let mut held = self.allotments.lock().unwrap_or_else(PoisonError::into_inner);
        let idle: Vec<RowKey> = held
            .iter()
            .filter(|((_, day), a)| !a.topping_up && (a.used_at.elapsed() >= ALLOT_IDLE || *day != today))
            .map(|(key, _)| key.clone())
            .collect();
        idle.into_iter().filter_map(|key| held.remove(&key).map(|a| (key, a.free))).collect()
    }

    async fn write(&self, batch: &mut Vec<Write>, mut give_back: Vec<(RowKey, i64)>) {
        let (mut reserves, mut settlements, mut top_ups) = (Vec::new(), Vec::new(), Vec::new());
        for write in batch.drain(..) {
            match write {
                Write::Reserve(reserve) => reserves.push(reserve),
                Write::Settle(settlement) => settlements.push(*settlement),
                Write::TopUp { day, global_cap, scopes } => {
                    top_ups.extend(scopes.into_iter().map(|(scope, cap)| ((scope, day.clone()), cap, global_cap)))
                }
                Write::GiveBack(allotments) => give_back.extend(allotments),
            }
        }
        give_back.retain(|(_, free)| *free > 0);
        if reserves.is_empty() && settlements.is_empty() && top_ups.is_empty() && give_back.is_empty() {
            return;
        }
        let mut plan = Plan { given_back: give_back, ..Plan::default() };
        match self.commit(&reserves, &settlements, &top_ups, &mut plan).await {
            Ok(()) => {
                self.apply(&plan);
                for (reserve, fits) in reserves.into_iter().zip(plan.decisions) {
                    let _ = reserve.answer.send(Ok(fits));
                }
            }
            Err(error) => {
                self.undo(&plan);
                for reserve in reserves {
                    let _ = reserve.answer.send(Err(error.clone()));
                }
                // the calls are over: their settlements get one more try on their own
                if !settlements.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let mut plan = Plan::default();
                    if let Err(error) = self.commit(&[], &settlements, &[], &mut plan).await {
                        tracing::warn!(%error, calls = settlements.len(), "calls' costs could not be settled");
                    }
                }
            }
        }
    }

    fn apply(&self, plan: &Plan) {
        let mut held = self.allotments.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        for (key, extra) in &plan.allotted {
            let allotment = held.entry(key.clone()).or_insert_with(|| Allotment::empty(now));
            allotment.free += extra;
            allotment.size = *extra;
        }
        for key in &plan.topped_up {
            if let Some(allotment) = held.get_mut(key) {
                allotment.topping_up = false;
            }
        }
    }

    fn undo(&self, plan: &Plan) {
        let mut held = self.allotments.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        for (key, free) in &plan.given_back {
            held.entry(key.clone()).or_insert_with(|| Allotment::empty(now)).free += free;
        }
        for key in &plan.topped_up {
            if let Some(allotment) = held.get_mut(key) {
                allotment.topping_up = false;
            }
        }
    }

    async fn commit(
        &self,
        reserves: &[Reserve],
        settlements: &[Settlement],
        top_ups: &[(RowKey, i64, i64)],
        plan: &mut Plan,
    ) -> Result<()> {
        let mut rows: BTreeMap<RowKey, DayRow> = BTreeMap::new();
        let mut touch = |scope: &str, day: &str| {
            rows.entry((scope.to_owned(), day.to_owned())).or_default();
        };
        for reserve in reserves {
            reserve.scopes.iter().for_each(|(scope, _, _)| touch(scope, &reserve.day));
        }
        for reservation in settlements.iter().filter_map(|s| s.reservation.as_ref()) {
            Budget::scopes_of(reservation).iter().for_each(|scope| touch(scope, &reservation.day));
        }
        top_ups.iter().for_each(|((scope, day), _, _)| touch(scope, day));
        plan.given_back.iter().for_each(|((scope, day), _)| touch(scope, day));
        let mut tx = self.db.writer.begin().await.map_err(db_error)?;
        lock_rows(&mut tx, self.db.backend, &mut rows).await?;

        // what frees money first
        for settlement in settlements {
            let Some(reservation) = &settlement.reservation else { continue };
            let (cost, requests) = settlement.record.as_ref().map_or((0, 0), |record| (record.cost_micros, 1));
            for scope in Budget::scopes_of(reservation) {
                let key = (scope, reservation.day.clone());
                if let Some(row) = rows.get_mut(&key) {
                    row.add(cost, -reservation.micros, requests);
                }
                // A call that cost more than it reserved may have spent what was left:
                // what is set aside goes back, and the next call is decided in the
                // database (an allotment is no licence to spend past a spent cap).
                if cost > reservation.micros {
                    let taken = self.allotments.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                    if let Some(allotment) = taken {
                        plan.given_back.push((key, allotment.free));
                    }
                }
            }
        }
        for (key, free) in &plan.given_back {
            if let Some(row) = rows.get_mut(key) {
                row.add(0, -free, 0);
            }
        }
        // then the reservations, in the order they came
        for reserve in reserves {
            let key_of = |scope: &String| (scope.clone(), reserve.day.clone());
            let mut refused = first_refusal(reserve, &rows);
            if refused.is_some() {
                // what this replica set aside under the caps it does not fit goes back, and
                // the call may fit in that
                let mut returned = Vec::new();
                {
                    let mut held = self.allotments.lock().unwrap_or_else(PoisonError::into_inner);
                    for (scope, cap, _) in &reserve.scopes {
                        if rows[&key_of(scope)].left(*cap) >= reserve.micros {
                            continue;
                        }
                        if let Some(allotment) = held.remove(&key_of(scope)) {
                            returned.push((key_of(scope), allotment.free));
                        }
                    }
                }
                for (key, free) in &returned {
                    rows.get_mut(key).expect("locked above").add(0, -free, 0);
                }
                plan.given_back.extend(returned);
                refused = first_refusal(reserve, &rows);
            }
            if let Some(refusal) = refused {
                plan.decisions.push(Err(refusal));
                continue;
            }
            for (scope, _, _) in &reserve.scopes {
                rows.get_mut(&key_of(scope)).expect("locked above").add(0, reserve.micros, 0);
            }
            plan.decisions.push(Ok(()));
            // set aside for the calls that follow where too little is (once per batch)
            let global_cap = reserve.scopes[0].1;
            let low: Vec<(RowKey, i64)> = {
                let held = self.allotments.lock().unwrap_or_else(PoisonError::into_inner);
                reserve
                    .scopes
                    .iter()
                    .map(|(scope, cap, _)| (key_of(scope), *cap))
                    .filter(|(key, _)| {
                        let running_low = held.get(key).is_none_or(|a| a.free < a.size / 2 + reserve.micros);
                        running_low && !plan.allotted.iter().any(|(allotted, _)| allotted == key)
                    })
                    .collect()
            };
            for (key, cap) in low {
                allot(&mut rows, plan, key, cap, global_cap);
            }
        }
        for (key, cap, global_cap) in top_ups {
            plan.topped_up.push(key.clone());
            allot(&mut rows, plan, key.clone(), *cap, *global_cap);
        }

        for ((scope, day), row) in &rows {
            if (row.spent_delta, row.reserved_delta, row.requests_delta) == (0, 0, 0) {
                continue;
            }
            sqlx::query(
                "UPDATE llm_budget_days SET spent_micros = spent_micros + $1, reserved_micros = reserved_micros + $2, \
                 requests = requests + $3 WHERE scope = $4 AND day = $5",
            )
            .bind(row.spent_delta)
            .bind(row.reserved_delta)
            .bind(row.requests_delta)
            .bind(scope)
            .bind(day)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        let records: Vec<&UsageRecord> = settlements.iter().filter_map(|s| s.record.as_ref()).collect();
        insert_usage(&mut tx, self.db.backend, &records).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}

/// The first scope whose cap the reservation does not fit under.
fn first_refusal(reserve: &Reserve, rows: &BTreeMap<RowKey, DayRow>) -> Option<Refusal> {
    reserve.scopes.iter().find_map(|(scope, cap, refusal)| {
        let row = &rows[&(scope.clone(), reserve.day.clone())];
        (row.left(*cap) < reserve.micros).then_some(*refusal)
    })
}

/// Sets aside for this replica what the scope can spare: 1% of its cap (a key without
/// a cap of its own is measured by the global one), at most an eighth of what is left.
fn allot(rows: &mut BTreeMap<RowKey, DayRow>, plan: &mut Plan, key: RowKey, cap: i64, global_cap: i64) {
    let Some(row) = rows.get_mut(&key) else { return };
    let extra = (cap.min(global_cap) / ALLOT_PART_OF_CAP).min(row.left(cap) / ALLOT_PART_OF_LEFT);
    if extra > 0 {
        row.add(0, extra, 0);
        plan.allotted.push((key, extra));
    }
}

/// Reads the rows under their locks, creating those that do not exist yet (a day's
/// first calls). On PostgreSQL the rows are locked in key order — `global` before
/// every `key:` — the one order every batch of every replica takes them in.
async fn lock_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: db::Backend,
    rows: &mut BTreeMap<RowKey, DayRow>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let lock = match backend {
        db::Backend::Postgres => " FOR UPDATE",
        db::Backend::Sqlite => "",
    };
    let select = format!(
        "SELECT scope, day, spent_micros, reserved_micros FROM llm_budget_days \
         WHERE (scope, day) IN (VALUES {}) ORDER BY scope, day{lock}",
        db::value_rows(backend, rows.len(), 2)
    );
    let insert = format!(
        "INSERT INTO llm_budget_days (scope, day, spent_micros, reserved_micros, requests) VALUES {} \
         ON CONFLICT (scope, day) DO NOTHING",
        db::value_rows(backend, rows.len(), 5)
    );
    for attempt in 0..2 {
        let mut query = sqlx::query(&select);
        for (scope, day) in rows.keys() {
            query = query.bind(scope).bind(day);
        }
        let found = query.fetch_all(&mut **tx).await.map_err(db_error)?;
        for row in &found {
            let key: RowKey = (row.try_get("scope").map_err(db_error)?, row.try_get("day").map_err(db_error)?);
            if let Some(day_row) = rows.get_mut(&key) {
                day_row.spent = row.try_get("spent_micros").map_err(db_error)?;
                day_row.reserved = row.try_get("reserved_micros").map_err(db_error)?;
            }
        }
        if found.len() == rows.len() || attempt == 1 {
            break;
        }
        // every row of the batch, present or not: one statement, and the conflict keeps what is there
        let mut query = sqlx::query(&insert);
        for (scope, day) in rows.keys() {
            query = query.bind(scope).bind(day).bind(0_i64).bind(0_i64).bind(0_i64);
        }
        query.execute(&mut **tx).await.map_err(db_error)?;
    }
    Ok(())
}

/// The records of a batch, in statements of at most [`WRITE_TOGETHER`] rows.
async fn insert_usage(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: db::Backend,
    records: &[&UsageRecord],
) -> Result<()> {
    const COLUMNS: usize = 20;
    let now = chrono::Utc::now();
    let day = now.format("%Y-%m-%d").to_string();
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for chunk in records.chunks(WRITE_TOGETHER) {
        let sql = format!(
            "INSERT INTO llm_usage (id, created_at, day, request_id, caller, provider, model, outcome, \
             prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_micros, latency_ms, \
             first_token_ms, streamed, fell_back, downgraded, api_key_id, kind) VALUES {}",
            db::value_rows(backend, chunk.len(), COLUMNS)
        );
        let mut query = sqlx::query(&sql);
        for r in chunk {
            query = query
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(micros(now))
                .bind(day.clone())
                .bind(r.request_id.clone())
                .bind(r.caller.clone())
                .bind(r.provider.clone())
                .bind(r.model.clone())
                .bind(r.outcome.clone())
                .bind(as_i64(r.usage.prompt_tokens))
                .bind(as_i64(r.usage.completion_tokens))
                .bind(as_i64(r.usage.cached_prompt_tokens))
                .bind(as_i64(r.usage.reasoning_tokens))
                .bind(r.cost_micros)
                .bind(as_i64(r.latency_ms))
                .bind(as_i64(r.first_token_ms))
                .bind(i64::from(r.streamed))
                .bind(i64::from(r.fell_back))
                .bind(i64::from(r.downgraded))
                .bind(r.api_key_id.clone())
                .bind(r.kind);
        }
        query.execute(&mut **tx).await.map_err(db_error)?;
    }
    Ok(())
}
