//! The jobs service: the queue and the worker protocol over gRPC (leases, fencing,
//! backoff, dead-letter, cancel, purge, stats), lapsed leases rescued by the reaper, the
//! built-in worker through the gateway's REST routes, and real `hx worker` processes
//! killed with SIGKILL while 10,000 jobs run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use helix_events::{Delivery, Subscription};
use helix_proto::v1 as pb;
use helix_proto::v1::jobs_service_client::JobsServiceClient;
use helix_runtime::grpc::GrpcChannel;
use helix_testkit::{Backend, TestEnv, TestHelix};
use hx::fleet::{Node, Role};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::{code, read};

crate::on_both_backends!(
    queue_over_grpc,
    lapsed_leases_are_rescued_and_fenced,
    builtin_worker_over_rest,
    killed_worker_processes_lose_no_job,
    schedules_fire_once_per_tick_across_replicas,
    http_requests_reach_public_or_allowed_hosts_only,
);

type Jobs = JobsServiceClient<GrpcChannel>;

const HX: &str = env!("CARGO_BIN_EXE_hx");

async fn connect(node: &Node) -> anyhow::Result<Jobs> {
    Ok(JobsServiceClient::new(node.grpc_channel().await?))
}

/// The Helix error code of a refused call, or `<ok>`.
fn refused<T>(result: Result<T, tonic::Status>) -> String {
    match result {
        Ok(_) => "<ok>".to_owned(),
        Err(status) => helix_core::Error::from(status).code().to_owned(),
    }
}

fn enqueue(kind: &str) -> pb::EnqueueJobRequest {
    pb::EnqueueJobRequest { kind: kind.to_owned(), ..Default::default() }
}

fn lease(worker: &str, kind: &str, max_jobs: u32) -> pb::LeaseJobsRequest {
    pb::LeaseJobsRequest { worker_id: worker.to_owned(), kinds: vec![kind.to_owned()], max_jobs, ..Default::default() }
}

fn complete(job: &pb::Job, attempt: u32) -> pb::CompleteJobRequest {
    pb::CompleteJobRequest { id: job.id.clone(), worker_id: "w".into(), result_json: r#"{"ok":true}"#.into(), attempt }
}

fn fail(job: &pb::Job, permanent: bool) -> pb::FailJobRequest {
    pb::FailJobRequest {
        id: job.id.clone(),
        worker_id: "w".into(),
        error: "boom".into(),
        permanent,
        attempt: job.attempt,
    }
}

fn secs(t: &Option<helix_proto::Timestamp>) -> f64 {
    t.as_ref().map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

async fn job_events(backend: Backend, env: &TestEnv, node: &Node, group: &str) -> anyhow::Result<Subscription> {
    let bus = match backend {
        Backend::Embedded => node.bus(),
        Backend::Fleet => env.bus().await?,
    };
    Ok(bus.subscribe("helix.job.>", group).await?)
}

/// The next delivery within `patience`, `None` without one. A problem the subscription
/// reports (on NATS, a pull whose heartbeats were missed while the test did not read) is
/// passed over, as the bus's contract asks of every consumer: the subscription goes on
/// and what was not acked comes again.
async fn next_delivery(events: &mut Subscription, patience: Duration) -> anyhow::Result<Option<Delivery>> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => anyhow::bail!("the subscription ended"),
            Ok(Some(Err(error))) => eprintln!("event subscription problem, going on: {error}"),
            Ok(Some(Ok(delivery))) => return Ok(Some(delivery)),
        }
    }
}

/// Events until `count` arrived (acked), as (subject, job id).
async fn collect(events: &mut Subscription, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let delivery = next_delivery(events, Duration::from_secs(30))
            .await?
            .ok_or_else(|| anyhow::anyhow!("only {} of {count} events arrived: {seen:?}", seen.len()))?;
        let id = delivery.envelope.payload["id"].as_str().unwrap_or_default().to_owned();
        seen.push((delivery.subject.clone(), id));
        delivery.ack().await?;
    }
    Ok(seen)
}

async fn queue_over_grpc(backend: Backend) -> anyhow::Result<()> {
    let env = TestEnv::new(backend).await?;
    let node = env.start(&[Role::Jobs]).await?;
    let mut jobs = connect(&node).await?;
    let mut events = job_events(backend, &env, &node, "e2e-jobs-queue").await?;

    // refused enqueues: each a clear INVALID_ARGUMENT with its code
    let cases: Vec<(pb::EnqueueJobRequest, &str)> = vec![
        (enqueue(""), "invalid_kind"),
        (enqueue("Has Space"), "invalid_kind"),
        (pb::EnqueueJobRequest { queue: "a b".into(), ..enqueue("t.a") }, "invalid_queue"),
        (pb::EnqueueJobRequest { payload_json: "[1]".into(), ..enqueue("t.a") }, "invalid_payload"),
        (pb::EnqueueJobRequest { payload_json: "{".into(), ..enqueue("t.a") }, "invalid_payload"),
        (pb::EnqueueJobRequest { max_attempts: Some(0), ..enqueue("t.a") }, "invalid_max_attempts"),
        (pb::EnqueueJobRequest { timeout_secs: Some(0), ..enqueue("t.a") }, "invalid_timeout"),
    ];
    for (request, expected) in cases {
        let status = jobs.enqueue_job(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{request:?}");
        assert_eq!(refused::<()>(Err(status)), expected, "{request:?}");
    }

    // an idempotency key enqueues once
    let keyed =
        pb::EnqueueJobRequest { idempotency_key: "once".into(), payload_json: r#"{"n":1}"#.into(), ..enqueue("t.a") };
    let first = jobs.enqueue_job(keyed.clone()).await?.into_inner();
    let again = jobs.enqueue_job(pb::EnqueueJobRequest { priority: 9, ..keyed }).await?.into_inner();
    assert_eq!(again, first, "a reused key returns the first job, unchanged");
    assert_eq!(
        (first.state.as_str(), first.attempt, first.max_attempts, first.queue.as_str()),
        ("pending", 0, 3, "default")
    );

    // leases: highest priority first, then oldest; each attempt gets its token
    let low = jobs.enqueue_job(pb::EnqueueJobRequest { priority: -1, ..enqueue("t.a") }).await?.into_inner();
    let high = jobs.enqueue_job(pb::EnqueueJobRequest { priority: 5, ..enqueue("t.a") }).await?.into_inner();
    let other_queue =
        jobs.enqueue_job(pb::EnqueueJobRequest { queue: "q2".into(), ..enqueue("t.a") }).await?.into_inner();
    let later = pb::EnqueueJobRequest {
        run_at: Some(helix_proto::Timestamp { seconds: now_secs() as i64 + 3600, nanos: 0 }),
        ..enqueue("t.a")
    };
    let later = jobs.enqueue_job(later).await?.into_inner();
    assert_eq!(
        refused(jobs.lease_jobs(pb::LeaseJobsRequest { kinds: vec![], ..lease("w", "t.a", 1) }).await),
        "invalid_kind"
    );
    assert_eq!(
        refused(jobs.lease_jobs(pb::LeaseJobsRequest { worker_id: String::new(), ..lease("w", "t.a", 1) }).await),
        "invalid_worker_id"
    );
    assert_eq!(refused(jobs.lease_jobs(lease("w", "t.a", 1001)).await), "invalid_max_jobs");
    let only_default = pb::LeaseJobsRequest { queues: vec!["default".into()], ..lease("w", "t.a", 10) };
    let leased = jobs.lease_jobs(only_default).await?.into_inner().jobs;
    let order: Vec<&str> = leased.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(order, [high.id.as_str(), first.id.as_str(), low.id.as_str()], "priority, then age; not q2, not later");
    assert!(leased.iter().all(|j| j.state == "running" && j.attempt == 1 && j.worker_id == "w"));
    assert!(leased.iter().all(|j| secs(&j.lease_expires_at) > now_secs() + 10.0), "15 s leases by default");
    let none =
        jobs.lease_jobs(pb::LeaseJobsRequest { queues: vec!["default".into()], ..lease("w", "t.a", 10) }).await?;
    assert!(none.into_inner().jobs.is_empty(), "the delayed job is not due");
    let started = Instant::now();
    let waited = jobs.lease_jobs(pb::LeaseJobsRequest { wait_ms: 300, ..lease("w", "t.none", 1) }).await?;
    assert!(waited.into_inner().jobs.is_empty() && started.elapsed() >= Duration::from_millis(300), "long poll waits");
    let [high, first, low] = [leased[0].clone(), leased[1].clone(), leased[2].clone()];

    // fencing: a wrong token is refused, the right one completes once
    assert_eq!(refused(jobs.complete_job(complete(&high, 2)).await), "lease_lost");
    let status = jobs.complete_job(complete(&high, 2)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(refused(jobs.complete_job(complete(&high, 0)).await), "invalid_attempt");
    let beat = pb::HeartbeatJobRequest { id: high.id.clone(), attempt: 1, ..Default::default() };
    let beat = jobs.heartbeat_job(beat).await?.into_inner();
    assert!(!beat.cancel_requested && secs(&beat.lease_expires_at) > now_secs() + 10.0);
    let done = jobs.complete_job(complete(&high, 1)).await?.into_inner();
    assert_eq!((done.state.as_str(), done.result_json.as_str()), ("completed", r#"{"ok":true}"#));
    assert!(done.finished_at.is_some());
    assert_eq!(refused(jobs.complete_job(complete(&high, 1)).await), "lease_lost", "completes once");
    let stale = pb::HeartbeatJobRequest { id: high.id.clone(), attempt: 1, ..Default::default() };
    assert_eq!(refused(jobs.heartbeat_job(stale).await), "lease_lost");

    // a failure waits min(5·2^(retries-1), 3600) s ±10%: 5 s after the first
    let failed = jobs.fail_job(fail(&first, false)).await?.into_inner();
    assert_eq!((failed.state.as_str(), failed.retries, failed.last_error.as_str()), ("failed", 1, "boom"));
    let wait = secs(&failed.run_at) - secs(&failed.updated_at);
    assert!((4.4..=5.6).contains(&wait), "backoff {wait} s");
    // permanent: straight to the dead-letter queue; retried from there, with a new token
    let dead = jobs.fail_job(fail(&low, true)).await?.into_inner();
    assert_eq!((dead.state.as_str(), dead.retries), ("dead", 1));
    let letters = jobs.list_dead_letter_jobs(pb::ListDeadLetterJobsRequest::default()).await?.into_inner();
    assert_eq!(letters.jobs.iter().map(|j| &j.id).collect::<Vec<_>>(), [&low.id]);
    let retried = jobs.retry_job(pb::RetryJobRequest { id: low.id.clone(), reset_retries: true }).await?.into_inner();
    assert_eq!((retried.state.as_str(), retried.retries), ("pending", 0));
    let again = jobs.lease_jobs(lease("w2", "t.a", 10)).await?.into_inner().jobs;
    let ids: BTreeSet<&str> = again.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([low.id.as_str(), other_queue.id.as_str()]));
    let low = again.iter().find(|j| j.id == low.id).unwrap().clone();
    assert_eq!((low.attempt, low.worker_id.as_str()), (2, "w2"));
    assert_eq!(
        refused(jobs.retry_job(pb::RetryJobRequest { id: high.id.clone(), reset_retries: false }).await),
        "not_retryable"
    );

    // dead exactly at max_attempts
    let once = jobs.enqueue_job(pb::EnqueueJobRequest { max_attempts: Some(2), ..enqueue("t.b") }).await?.into_inner();
    let mut states = Vec::new();
    for _ in 0..2 {
        jobs.retry_job(pb::RetryJobRequest { id: once.id.clone(), reset_retries: false }).await.ok();
        let job = jobs.lease_jobs(lease("w", "t.b", 1)).await?.into_inner().jobs.remove(0);
        states.push(jobs.fail_job(fail(&job, false)).await?.into_inner().state);
    }
    assert_eq!(states, ["failed", "dead"]);

    // cancel: a waiting job at once (again: the same answer), a finished one is refused
    let cancelled = jobs.cancel_job(pb::CancelJobRequest { id: later.id.clone(), reason: "no".into() }).await?;
    assert_eq!(cancelled.into_inner().state, "cancelled");
    let twice = jobs.cancel_job(pb::CancelJobRequest { id: later.id.clone(), reason: String::new() }).await?;
    assert_eq!(twice.into_inner().state, "cancelled");
    assert_eq!(
        refused(jobs.cancel_job(pb::CancelJobRequest { id: high.id.clone(), reason: String::new() }).await),
        "not_cancellable"
    );
    // running: flagged, cancelled when the worker reports
    let flagged =
        jobs.cancel_job(pb::CancelJobRequest { id: low.id.clone(), reason: String::new() }).await?.into_inner();
    assert_eq!((flagged.state.as_str(), flagged.cancel_requested), ("running", true));
    let told = pb::HeartbeatJobRequest { id: low.id.clone(), attempt: 2, wait_ms: 5000, ..Default::default() };
    let started = Instant::now();
    assert!(jobs.heartbeat_job(told).await?.into_inner().cancel_requested);
    assert!(started.elapsed() < Duration::from_secs(1), "a cancelled job's heartbeat answers at once");
    let stopped = jobs.fail_job(fail(&low, false)).await?.into_inner();
    assert_eq!(stopped.state, "cancelled");

    // bulk: all or none, each idempotent on its key, in the order given
    let bulk = |requests: Vec<pb::EnqueueJobRequest>| pb::EnqueueJobsRequest { jobs: requests };
    let bad = bulk(vec![enqueue("t.c"), pb::EnqueueJobRequest { payload_json: "[]".into(), ..enqueue("t.c") }]);
    let status = jobs.enqueue_jobs(bad).await.unwrap_err();
    assert!(status.message().starts_with("jobs[1]: "), "{status:?}");
    assert_eq!(refused::<()>(Err(status)), "invalid_payload");
    assert_eq!(refused(jobs.enqueue_jobs(bulk(vec![])).await), "invalid_bulk");
    let keyed = |key: &str| pb::EnqueueJobRequest { idempotency_key: key.into(), ..enqueue("t.c") };
    let added = jobs.enqueue_jobs(bulk(vec![keyed("once"), keyed("k1"), keyed("k1")])).await?.into_inner().jobs;
    assert_eq!(added[0].id, first.id, "a key of an earlier call");
    assert_eq!(added[1].id, added[2].id, "a key repeated within the call");
    let purge_c =
        pb::PurgeJobsRequest { states: vec!["cancelled".into()], kind: Some("t.c".into()), ..Default::default() };
    jobs.cancel_job(pb::CancelJobRequest { id: added[1].id.clone(), reason: String::new() }).await?;
    assert_eq!(jobs.purge_jobs(purge_c).await?.into_inner().purged, 1);

    // lookups
    assert_eq!(refused(jobs.get_job(pb::GetJobRequest { id: "nope".into() }).await), "invalid_id");
    assert_eq!(refused(jobs.get_job(pb::GetJobRequest { id: uuid::Uuid::now_v7().to_string() }).await), "not_found");
    let by_state = |state: &str| pb::ListJobsRequest { state: Some(state.into()), ..Default::default() };
    assert_eq!(refused(jobs.list_jobs(by_state("nope")).await), "invalid_state");
    let completed = jobs.list_jobs(by_state("completed")).await?.into_inner().jobs;
    assert_eq!(completed.iter().map(|j| &j.id).collect::<Vec<_>>(), [&high.id]);
    let page = jobs
        .list_jobs(pb::ListJobsRequest {
            page: Some(pb::PageRequest { limit: 2, cursor: String::new() }),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(page.jobs.len(), 2);
    assert!(!page.next_cursor.is_empty());

    // stats from one snapshot: the parts add up
    let stats = jobs.get_job_stats(pb::GetJobStatsRequest::default()).await?.into_inner();
    let by_state = [stats.pending, stats.running, stats.completed, stats.failed, stats.dead, stats.cancelled];
    assert_eq!(by_state, [0, 1, 1, 1, 1, 2], "{stats:?}");
    assert_eq!(stats.total, 6);
    assert_eq!(stats.active_workers, 1);
    let queued: u64 =
        stats.by_queue.iter().map(|q| q.pending + q.running + q.completed + q.failed + q.dead + q.cancelled).sum();
    assert_eq!(queued, stats.total);
    let kinds: BTreeMap<&str, u64> = stats.by_kind.iter().map(|k| (k.kind.as_str(), k.completed + k.dead)).collect();
    assert_eq!(kinds, BTreeMap::from([("t.a", 1), ("t.b", 1)]));

    // purge: finished jobs only
    let running = pb::PurgeJobsRequest { states: vec!["running".into()], ..Default::default() };
    assert_eq!(refused(jobs.purge_jobs(running).await), "invalid_state");
    let purged = jobs.purge_jobs(pb::PurgeJobsRequest::default()).await?.into_inner().purged;
    assert_eq!(purged, 3, "completed and cancelled");
    let dead = pb::PurgeJobsRequest { states: vec!["dead".into()], kind: Some("t.b".into()), ..Default::default() };
    assert_eq!(jobs.purge_jobs(dead).await?.into_inner().purged, 1);
    assert_eq!(jobs.get_job_stats(pb::GetJobStatsRequest::default()).await?.into_inner().total, 2);

    // one event per state change, none for the refused calls or the reused key
    let seen = collect(&mut events, 24).await?;
    let count = |subject: &str| seen.iter().filter(|(s, _)| s == subject).count();
    let counts: Vec<usize> = ["enqueued", "started", "completed", "failed", "dead_lettered", "retried", "cancelled"]
        .iter()
        .map(|e| count(&format!("helix.job.{e}")))
        .collect();
    assert_eq!(counts, [7, 7, 1, 2, 2, 2, 3], "{seen:?}");
    assert!(next_delivery(&mut events, Duration::from_millis(500)).await?.is_none(), "no more events");
    node.stop().await;
    Ok(())
}

async fn lapsed_leases_are_rescued_and_fenced(backend: Backend) -> anyhow::Result<()> {
    let env = TestEnv::new(backend).await?;
    let node = env.start(&[Role::Jobs]).await?;
    let mut jobs = connect(&node).await?;
    let two =
        jobs.enqueue_job(pb::EnqueueJobRequest { max_attempts: Some(2), ..enqueue("t.lapse") }).await?.into_inner();
    let short = |worker: &str| pb::LeaseJobsRequest { lease_secs: 1, ..lease(worker, "t.lapse", 1) };
    let a = jobs.lease_jobs(short("a")).await?.into_inner().jobs.remove(0);
    assert_eq!(a.attempt, 1);

    // the worker goes silent: the reaper puts the job back, counting the attempt
    let rescued = wait_for(&mut jobs, &two.id, |j| j.state == "pending", Duration::from_secs(10)).await?;
    assert_eq!(rescued.retries, 1);
    assert!(rescued.last_error.contains("lapsed"), "{}", rescued.last_error);
    let b = jobs.lease_jobs(lease("b", "t.lapse", 1)).await?.into_inner().jobs.remove(0);
    assert_eq!((b.id.as_str(), b.attempt), (two.id.as_str(), 2));
    // the first worker wakes up: everything it says about the job is refused
    let late = pb::HeartbeatJobRequest { id: a.id.clone(), attempt: a.attempt, ..Default::default() };
    assert_eq!(refused(jobs.heartbeat_job(late).await), "lease_lost");
    assert_eq!(refused(jobs.complete_job(complete(&a, a.attempt)).await), "lease_lost");
    assert_eq!(refused(jobs.fail_job(fail(&a, false)).await), "lease_lost");
    // a batch of completions is judged job by job: the stale one is refused, the live one lands
    let batch = |all: Vec<pb::CompleteJobRequest>| pb::CompleteJobsRequest { jobs: all };
    assert_eq!(refused(jobs.complete_jobs(batch(vec![])).await), "invalid_bulk");
    let zero = batch(vec![complete(&b, b.attempt), complete(&b, 0)]);
    assert_eq!(refused(jobs.complete_jobs(zero).await), "invalid_attempt", "a malformed entry refuses the call");
    // a job named twice in one batch completes once
    let all = batch(vec![complete(&a, a.attempt), complete(&b, b.attempt), complete(&b, b.attempt)]);
    let outcomes = jobs.complete_jobs(all).await?.into_inner().outcomes;
    let judged: Vec<(&str, bool, &str)> =
        outcomes.iter().map(|o| (o.id.as_str(), o.completed, o.error_code.as_str())).collect();
    assert_eq!(
        judged,
        [(a.id.as_str(), false, "lease_lost"), (b.id.as_str(), true, ""), (b.id.as_str(), false, "lease_lost")]
    );
    let done = jobs.get_job(pb::GetJobRequest { id: b.id.clone() }).await?.into_inner();
    assert_eq!((done.state.as_str(), done.worker_id.as_str(), done.attempt), ("completed", "b", 2));
    assert_eq!(refused(jobs.complete_job(complete(&b, b.attempt)).await), "lease_lost", "completes once");

    // a lapse on the last attempt dead-letters the job
    let one =
        jobs.enqueue_job(pb::EnqueueJobRequest { max_attempts: Some(1), ..enqueue("t.lapse") }).await?.into_inner();
    jobs.lease_jobs(short("c")).await?;
    let dead = wait_for(&mut jobs, &one.id, |j| j.state == "dead", Duration::from_secs(10)).await?;
    assert_eq!((dead.retries, dead.attempt), (1, 1));
    assert!(dead.finished_at.is_some());
    node.stop().await;
    Ok(())
}

async fn wait_for(
    jobs: &mut Jobs,
    id: &str,
    done: impl Fn(&pb::Job) -> bool,
    within: Duration,
) -> anyhow::Result<pb::Job> {
    let deadline = Instant::now() + within;
    loop {
        let job = jobs.get_job(pb::GetJobRequest { id: id.to_owned() }).await?.into_inner();
        if done(&job) {
            return Ok(job);
        }
        anyhow::ensure!(Instant::now() < deadline, "job {id} stayed {} ({job:?})", job.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rest_job(helix: &TestHelix, id: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, job) = read(helix.api(Method::GET, &format!("/api/v1/jobs/{id}")).send().await?).await;
        assert_eq!(status, 200, "{job}");
        if done(&job) {
            return Ok(job);
        }
        anyhow::ensure!(Instant::now() < deadline, "job {id} stayed {}", job["state"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn builtin_worker_over_rest(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let post = |body: Value| helix.api(Method::POST, "/api/v1/jobs").json(&body);

    // bad input: a clear 4xx with a code, never a 500
    let cases = [
        (helix.api(Method::POST, "/api/v1/jobs").json(&json!({"payload": {}})), 422, "invalid_body"),
        (post(json!({"kind": "Nope"})), 400, "invalid_kind"),
        (post(json!({"kind": "echo", "payload": [1]})), 422, "invalid_body"),
        (post(json!({"kind": "echo", "max_attempts": 0})), 400, "invalid_max_attempts"),
        (post(json!({"kind": "echo", "delay_secs": 1, "run_at": "2030-01-01T00:00:00Z"})), 400, "invalid_run_at"),
        (post(json!({"kind": "echo", "surprise": 1})), 422, "unknown_field"),
        (helix.api(Method::GET, "/api/v1/jobs/nope"), 400, "invalid_id"),
        (helix.api(Method::GET, &format!("/api/v1/jobs/{}", uuid::Uuid::now_v7())), 404, "not_found"),
        (helix.api(Method::GET, "/api/v1/jobs?state=nope"), 400, "invalid_state"),
        (helix.api(Method::GET, "/api/v1/jobs?limit=5000"), 400, "invalid_limit"),
        (helix.api(Method::POST, "/api/v1/jobs/purge").json(&json!({"states": ["running"]})), 400, "invalid_state"),
    ];
    for (request, status, expected) in cases {
        let (got, body) = read(request.send().await?).await;
        assert_eq!((got, code(&body)), (status, expected), "{body}");
    }

    // echo: 201 with id and state, then completed by the in-process worker
    let (status, job) = read(post(json!({"kind": "echo", "payload": {"x": 1}})).send().await?).await;
    assert_eq!((status, job["state"].as_str()), (201, Some("pending")), "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = rest_job(&helix, &id, |j| j["state"] == "completed").await?;
    assert_eq!(done["result"], json!({"x": 1}));
    assert_eq!(done["attempt"], 1);

    // fail (permanent): dead-lettered; retried from the dead-letter queue, dead again
    let body = json!({"kind": "fail", "payload": {"message": "nope", "permanent": true}});
    let (_, job) = read(post(body).send().await?).await;
    let failing = job["id"].as_str().unwrap().to_owned();
    let dead = rest_job(&helix, &failing, |j| j["state"] == "dead").await?;
    assert_eq!(dead["last_error"], "nope");
    let (status, letters) = read(helix.api(Method::GET, "/api/v1/jobs/dead-letter").send().await?).await;
    assert_eq!(status, 200);
    assert_eq!(letters["jobs"][0]["id"], json!(failing));
    let (status, retried) = read(helix.api(Method::POST, &format!("/api/v1/jobs/{failing}/retry")).send().await?).await;
    assert_eq!(status, 200, "{retried}");
    let again = rest_job(&helix, &failing, |j| j["state"] == "dead" && j["attempt"] == 2).await?;
    assert_eq!(again["retries"], 2);
    let (status, refused) = read(helix.api(Method::POST, &format!("/api/v1/jobs/{id}/retry")).send().await?).await;
    assert_eq!((status, code(&refused)), (409, "not_retryable"));

    // cancel a running sleep: its worker stops within 2 s
    let (_, job) = read(post(json!({"kind": "sleep", "payload": {"ms": 60000}})).send().await?).await;
    let sleeping = job["id"].as_str().unwrap().to_owned();
    rest_job(&helix, &sleeping, |j| j["state"] == "running").await?;
    let asked = Instant::now();
    let (status, flagged) = read(
        helix
            .api(Method::POST, &format!("/api/v1/jobs/{sleeping}/cancel"))
            .json(&json!({"reason": "enough"}))
            .send()
            .await?,
    )
    .await;
    assert_eq!((status, &flagged["cancel_requested"]), (200, &json!(true)), "{flagged}");
    let cancelled = rest_job(&helix, &sleeping, |j| j["state"] == "cancelled").await?;
    assert!(asked.elapsed() < Duration::from_secs(2), "stopped after {:?}", asked.elapsed());
    assert!(cancelled["finished_at"].is_string());

    // bulk over REST, and every route in the OpenAPI document
    let bulk = json!({"jobs": [{"kind": "echo", "idempotency_key": "b"}, {"kind": "echo", "idempotency_key": "b"}]});
    let (status, added) = read(helix.api(Method::POST, "/api/v1/jobs/bulk").json(&bulk).send().await?).await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["jobs"][0]["id"], added["jobs"][1]["id"]);
    rest_job(&helix, added["jobs"][0]["id"].as_str().unwrap(), |j| j["state"] == "completed").await?;
    let (_, doc) = read(helix.api(Method::GET, "/api/v1/openapi.json").send().await?).await;
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/bulk",
        "/api/v1/jobs/stats",
        "/api/v1/jobs/dead-letter",
        "/api/v1/jobs/purge",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/retry",
        "/api/v1/jobs/{id}/cancel",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} not in the OpenAPI document");
    }

    // stats and purge
    let (status, stats) = read(helix.api(Method::GET, "/api/v1/jobs/stats").send().await?).await;
    assert_eq!(status, 200);
    assert_eq!(
        (stats["total"].as_u64(), stats["completed"].as_u64(), stats["dead"].as_u64()),
        (Some(4), Some(2), Some(1))
    );
    assert_eq!(stats["by_queue"][0]["queue"], "default");
    let (status, purged) = read(helix.api(Method::POST, "/api/v1/jobs/purge").send().await?).await;
    assert_eq!((status, purged["purged"].as_u64()), (200, Some(3)), "{purged}");
    let (_, page) = read(helix.api(Method::GET, "/api/v1/jobs").send().await?).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);

    // schedules over REST
    let schedules = |body: Value| helix.api(Method::POST, "/api/v1/jobs/schedules").json(&body);
    let hourly = json!({"name": "hourly", "interval_secs": 3600, "kind": "echo", "payload": {"n": 1}});
    let (status, created) = read(schedules(hourly.clone()).send().await?).await;
    assert_eq!(
        (status, &created["interval_secs"], &created["enabled"]),
        (201, &json!(3600), &json!(true)),
        "{created}"
    );
    for (body, status, expected) in [
        (hourly, 409, "schedule_exists"),
        (json!({"name": "x", "cron": "nope", "kind": "echo"}), 400, "invalid_cron"),
        (json!({"name": "x", "kind": "echo"}), 400, "invalid_schedule"),
        (json!({"name": "x", "cron": "* * * * *"}), 422, "invalid_body"),
    ] {
        let (got, answer) = read(schedules(body).send().await?).await;
        assert_eq!((got, code(&answer)), (status, expected), "{answer}");
    }
    let path = format!("/api/v1/jobs/schedules/{}", created["id"].as_str().unwrap());
    let (status, job) = read(helix.api(Method::POST, &format!("{path}/trigger")).send().await?).await;
    assert_eq!((status, &job["schedule_id"]), (201, &created["id"]), "{job}");
    let ran = rest_job(&helix, job["id"].as_str().unwrap(), |j| j["state"] == "completed").await?;
    assert_eq!(ran["result"], json!({"n": 1}));
    let (status, updated) =
        read(helix.api(Method::PUT, &path).json(&json!({"cron": "0 3 * * *", "enabled": false})).send().await?).await;
    assert_eq!((status, &updated["cron"], &updated["enabled"]), (200, &json!("0 3 * * *"), &json!(false)), "{updated}");
    let (status, listed) = read(helix.api(Method::GET, "/api/v1/jobs/schedules?enabled=false").send().await?).await;
    assert_eq!((status, listed["schedules"].as_array().map(Vec::len)), (200, Some(1)));
    let (status, _) = read(helix.api(Method::DELETE, &path).send().await?).await;
    assert_eq!(status, 204);
    let (status, gone) = read(helix.api(Method::GET, &path).send().await?).await;
    assert_eq!((status, code(&gone)), (404, "not_found"));

    // the CLI over the same routes
    let hx = |args: &[&str]| {
        let mut command = std::process::Command::new(HX);
        command.args(args).args(["--server", &helix.base_url, "--api-key", &helix.env.admin_key]);
        command.output()
    };
    let out = hx(&["jobs", "enqueue", "echo", "--payload", r#"{"cli": true}"#, "--json"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job: Value = serde_json::from_slice(&out.stdout)?;
    rest_job(&helix, job["id"].as_str().unwrap(), |j| j["state"] == "completed").await?;
    let out = hx(&["jobs", "get", job["id"].as_str().unwrap()])?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = hx(&["jobs", "schedule", "nightly", "echo", "--cron", "0 3 * * *"])?;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("scheduled nightly"), "{out:?}");
    let out = hx(&["jobs", "schedules"])?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 3 * * *"), "{out:?}");
    let out = hx(&["jobs", "retry", "not-an-id"])?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invalid_id"), "{out:?}");
    helix.stop().await;
    Ok(())
}

const JOBS: usize = 10_000;
const WORKERS: usize = 4;

struct Worker {
    id: String,
    child: Child,
}

fn spawn_worker(env: &TestEnv, jobs_url: &str, id: &str) -> anyhow::Result<Worker> {
    let child = Command::new(HX)
        .args(["worker", "--kinds", "sleep", "--concurrency", "16", "--worker-id", id])
        .envs(env.process_env())
        .env("HELIX_JOBS_URL", jobs_url)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok(Worker { id: id.to_owned(), child })
}

/// 10,000 jobs, 4 `hx worker` processes, two of them SIGKILLed at random points: every
/// job completes exactly once, and the jobs the killed workers held run again within 30 s.
async fn killed_worker_processes_lose_no_job(backend: Backend) -> anyhow::Result<()> {
    let mut env = TestEnv::new(backend).await?;
    env.config.jobs.worker_kinds = Vec::new(); // only the worker processes run jobs
    let node = env.start(&[Role::Jobs]).await?;
    let jobs = connect(&node).await?;
    let mut events = {
        let bus = match backend {
            Backend::Embedded => node.bus(),
            Backend::Fleet => env.bus().await?,
        };
        bus.subscribe("helix.job.completed", "e2e-jobs-crash").await?
    };

    let start = Instant::now();
    // one bulk after another, as a client would; keyed, so a bulk refused with
    // "database busy" (SQLite under this load) is sent again without doubling a job
    let mut enqueued = Vec::new();
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(1000) {
        let requests: Vec<pb::EnqueueJobRequest> = chunk
            .iter()
            .map(|i| pb::EnqueueJobRequest {
                payload_json: json!({"ms": 1 + i % 10}).to_string(),
                max_attempts: Some(5),
                idempotency_key: format!("crash-{i}"),
                ..enqueue("sleep")
            })
            .collect();
        let mut attempts = 0;
        let added = loop {
            attempts += 1;
            match jobs.clone().enqueue_jobs(pb::EnqueueJobsRequest { jobs: requests.clone() }).await {
                Ok(response) => break response.into_inner().jobs,
                Err(status) if status.code() == tonic::Code::Unavailable && attempts < 5 => continue,
                Err(status) => return Err(status.into()),
            }
        };
        enqueued.push(added.into_iter().map(|j| j.id).collect::<Vec<_>>());
    }
    let all: BTreeSet<String> = enqueued.into_iter().flatten().collect();
    assert_eq!(all.len(), JOBS);
    let t0 = Instant::now();
    eprintln!("{backend:?}: enqueued {JOBS} jobs in {:?}", start.elapsed());

    let mut workers = (0..WORKERS)
        .map(|i| spawn_worker(&env, &node.grpc_url(), &format!("crash-worker-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let completed = || {
        let mut client = jobs.clone();
        async move { anyhow::Ok(client.get_job_stats(pb::GetJobStatsRequest::default()).await?.into_inner()) }
    };
    // kill two workers when random shares of the jobs are done
    let mut kill_at: Vec<u64> = vec![rand::random_range(500..3000), rand::random_range(3000..6000)];
    let mut held: HashMap<String, f64> = HashMap::new(); // job id -> when its worker died
    let started = Instant::now();
    while !kill_at.is_empty() {
        let now = completed().await?;
        if now.completed >= kill_at[0] {
            let mut victim = workers.remove(0);
            victim.child.start_kill()?; // SIGKILL
            victim.child.wait().await?;
            let killed_at = now_secs();
            kill_at.remove(0);
            for job in running_jobs(&mut jobs.clone()).await? {
                if job.worker_id == victim.id {
                    held.insert(job.id, killed_at);
                }
            }
        }
        // generous: on a loaded two-core machine with debug builds the run takes minutes
        anyhow::ensure!(started.elapsed() < Duration::from_secs(240), "the workers never got that far: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(!held.is_empty(), "the killed workers held no jobs");
    eprintln!("{backend:?}: killed two workers by {:?}, holding {} jobs", t0.elapsed(), held.len());

    // every job completes
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = completed().await?;
        if now.completed == JOBS as u64 {
            assert_eq!((now.total, now.dead, now.failed), (JOBS as u64, 0, 0), "{now:?}");
            eprintln!("{backend:?}: all completed by {:?}", t0.elapsed());
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not every job completed: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the killed workers' jobs ran again, within 30 s of the kill; except a job whose
    // completion the victim sent just before it died (listed running a moment after the
    // kill, completed at its first attempt by the request in flight)
    let mut client = jobs.clone();
    let mut ran_again = 0;
    for (id, killed_at) in &held {
        let job = client.get_job(pb::GetJobRequest { id: id.clone() }).await?.into_inner();
        assert_eq!(job.state, "completed");
        if job.attempt == 1 && secs(&job.finished_at) - killed_at < 1.0 {
            continue;
        }
        assert!(job.attempt >= 2 && job.retries >= 1, "{job:?}");
        let restarted = secs(&job.started_at) - killed_at;
        assert!(restarted < 30.0, "job {id} ran again {restarted:.1} s after its worker died");
        ran_again += 1;
    }
    assert!(ran_again > 0, "none of the {} jobs the killed workers held ran again", held.len());
    // none lost, none completed twice: one completion event per job
    let seen = collect(&mut events, JOBS).await?;
    eprintln!("{backend:?}: all completion events by {:?}", t0.elapsed());
    let ids: BTreeSet<String> = seen.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, all, "one completion per job");
    assert!(next_delivery(&mut events, Duration::from_secs(1)).await?.is_none(), "a job completed twice");
    for mut worker in workers {
        worker.child.start_kill()?;
        worker.child.wait().await?;
    }
    node.stop().await;
    Ok(())
}

async fn running_jobs(jobs: &mut Jobs) -> anyhow::Result<Vec<pb::Job>> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = pb::PageRequest { limit: 1000, cursor };
        let request = pb::ListJobsRequest { state: Some("running".into()), page: Some(page), ..Default::default() };
        let answer = jobs.list_jobs(request).await?.into_inner();
        all.extend(answer.jobs);
        if answer.next_cursor.is_empty() {
            return Ok(all);
        }
        cursor = answer.next_cursor;
    }
}

fn schedule(name: &str, cron: &str, interval_secs: u32) -> pb::CreateJobScheduleRequest {
    pb::CreateJobScheduleRequest {
        name: name.to_owned(),
        cron: cron.to_owned(),
        interval_secs,
        kind: "t.tick".to_owned(),
        allow_overlap: true,
        ..Default::default()
    }
}

async fn jobs_of(jobs: &mut Jobs, schedule_id: &str) -> anyhow::Result<Vec<pb::Job>> {
    let request = pb::ListJobsRequest { kind: Some("t.tick".into()), ..Default::default() };
    let all = jobs.list_jobs(request).await?.into_inner().jobs;
    Ok(all.into_iter().filter(|j| j.schedule_id == schedule_id).collect())
}

/// Two jobs services on one database tick every second each; a schedule's tick still
/// enqueues one job.
async fn schedules_fire_once_per_tick_across_replicas(backend: Backend) -> anyhow::Result<()> {
    let mut env = TestEnv::new(backend).await?;
    env.config.jobs.worker_kinds = Vec::new();
    let one = env.start(&[Role::Jobs]).await?;
    let two = env.start(&[Role::Jobs]).await?;
    let mut jobs = connect(&one).await?;
    let mut other = connect(&two).await?;

    let cases = [
        (schedule("a", "", 0), "invalid_schedule"),
        (schedule("a", "* * * * *", 5), "invalid_schedule"),
        (schedule("a", "not cron at all", 0), "invalid_cron"),
        (schedule("a", "61 * * * *", 0), "invalid_cron"),
        (
            pb::CreateJobScheduleRequest { timezone: "Europe/Paris".into(), ..schedule("a", "* * * * *", 0) },
            "invalid_timezone",
        ),
        (pb::CreateJobScheduleRequest { kind: "Bad".into(), ..schedule("a", "* * * * *", 0) }, "invalid_kind"),
        (schedule("", "* * * * *", 0), "invalid_name"),
    ];
    for (request, expected) in cases {
        assert_eq!(refused(jobs.create_job_schedule(request.clone()).await), expected, "{request:?}");
    }
    // every second by cron (six fields, seconds first) with overlap, its jobs taken by a
    // worker that never finishes them (runs overlap); every second by interval without
    // overlap, and with overlap, neither's jobs taken: a waiting job holds back later
    // ticks, so nothing piles up
    let ticks = pb::CreateJobScheduleRequest { queue: "ticks".into(), ..schedule("by-cron", "* * * * * *", 0) };
    let cron = jobs.create_job_schedule(ticks).await?.into_inner();
    let single = pb::CreateJobScheduleRequest { allow_overlap: false, ..schedule("single", "", 1) };
    let single = other.create_job_schedule(single).await?.into_inner();
    let unworked = other.create_job_schedule(schedule("unworked", "* * * * * *", 0)).await?.into_inner();
    assert_eq!(refused(jobs.create_job_schedule(schedule("by-cron", "", 60)).await), "schedule_exists");
    assert_eq!(other.get_job_schedule(pb::GetJobScheduleRequest { id: cron.id.clone() }).await?.into_inner(), cron);

    let taker = {
        let mut jobs = jobs.clone();
        let request =
            pb::LeaseJobsRequest { queues: vec!["ticks".into()], wait_ms: 100, ..lease("taker", "t.tick", 10) };
        tokio::spawn(async move {
            loop {
                if jobs.lease_jobs(request.clone()).await.is_err() {
                    return;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(4500)).await;
    taker.abort();
    let fired = jobs_of(&mut jobs, &cron.id).await?;
    // a tick a second: at most 6 in 4.5 s, and at least 2 even on a loaded machine
    assert!((2..=6).contains(&fired.len()), "{} jobs in 4.5 s", fired.len());
    // A tick fires at or after its second, and the next one is claimed only from the
    // next second on: two jobs of one tick would share a whole second. (Two fires can be
    // close together: a replica late in second N, the other at the start of N + 1.)
    let mut times: Vec<f64> = fired.iter().map(|j| secs(&j.created_at)).collect();
    times.sort_by(f64::total_cmp);
    for pair in times.windows(2) {
        assert!(pair[1].floor() > pair[0].floor(), "two jobs for one tick: {times:?}");
    }
    assert_eq!(jobs_of(&mut jobs, &single.id).await?.len(), 1, "no overlap");
    assert_eq!(jobs_of(&mut jobs, &unworked.id).await?.len(), 1, "overlap, but no backlog");
    let got = jobs.get_job_schedule(pb::GetJobScheduleRequest { id: cron.id.clone() }).await?.into_inner();
    assert!(secs(&got.next_run_at) > secs(&got.last_run_at) && !got.last_job_id.is_empty());

    // trigger: now, whatever the ticks; disable: no more ticks; delete
    let triggered = jobs.trigger_job_schedule(pb::TriggerJobScheduleRequest { id: single.id.clone() }).await?;
    assert_eq!(triggered.into_inner().schedule_id, single.id);
    assert_eq!(jobs_of(&mut jobs, &single.id).await?.len(), 2);
    let off = pb::UpdateJobScheduleRequest { id: cron.id.clone(), enabled: Some(false), ..Default::default() };
    assert!(!jobs.update_job_schedule(off).await?.into_inner().enabled);
    let before = jobs_of(&mut jobs, &cron.id).await?.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(jobs_of(&mut jobs, &cron.id).await?.len(), before, "a disabled schedule does not fire");
    let listed = jobs.list_job_schedules(pb::ListJobSchedulesRequest { enabled: Some(true), page: None }).await?;
    assert_eq!(listed.into_inner().schedules.iter().map(|s| &s.id).collect::<Vec<_>>(), [&unworked.id, &single.id]);
    jobs.delete_job_schedule(pb::DeleteJobScheduleRequest { id: cron.id.clone() }).await?;
    assert_eq!(refused(jobs.get_job_schedule(pb::GetJobScheduleRequest { id: cron.id.clone() }).await), "not_found");
    one.stop().await;
    two.stop().await;
    Ok(())
}

/// A plain HTTP/1.1 server on 127.0.0.1:0 answering a request for `path` with the whole
/// response `answer(path)`, one request per connection: a target for outbound requests.
pub(crate) async fn http_target(
    answer: impl Fn(&str) -> String + Send + Sync + 'static,
) -> anyhow::Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let _ = socket.write_all(answer(path).as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// An answer of `status` with `headers` and a text body, closing the connection.
pub(crate) fn http_answer(status: &str, headers: &str, body: &str) -> String {
    format!("HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
}

/// `http.request` under the outbound policy: an internal address (literal, by a name
/// that resolves inside, or as a redirect's target) fails the job at once, with the
/// address's class and never the target's body; an allowed host:port works.
async fn http_requests_reach_public_or_allowed_hosts_only(backend: Backend) -> anyhow::Result<()> {
    // an "internal" service whose body must never be read, and an allowed host that
    // redirects inside
    let internal = http_target(|_| http_answer("200 OK", "", "internal-secret")).await?;
    let allowed = http_target(move |path| match path {
        "/to-metadata" => http_answer("302 Found", "location: http://169.254.169.254/latest/meta-data/\r\n", ""),
        "/to-internal" => http_answer("302 Found", &format!("location: http://{internal}/\r\n"), ""),
        "/to-localhost" => {
            http_answer("302 Found", &format!("location: http://localhost:{}/\r\n", internal.port()), "")
        }
        _ => http_answer("200 OK", "", "fine"),
    })
    .await?;
    let mut env = TestEnv::new(backend).await?;
    env.config.outbound.allowed_hosts = vec![allowed.to_string()];
    let node = env.start(&Role::ALL).await?;
    let base_url = node.gateway_url().expect("gateway role runs");
    let helix = TestHelix { env, node: Some(node), base_url, http: reqwest::Client::new() };

    let p_internal = internal.port();
    // (url, Ok(body) or Err(a part of the reason))
    let cases: Vec<(String, Result<&str, &str>)> = vec![
        (format!("http://{allowed}/"), Ok("fine")),
        (format!("http://{internal}/"), Err("127.0.0.1 is a loopback address")),
        // the allowed host on a port not listed
        ("http://127.0.0.1:1/".into(), Err("127.0.0.1 is a loopback address")),
        ("http://169.254.169.254/latest/meta-data/".into(), Err("169.254.169.254 is a link-local address")),
        (format!("http://[::1]:{p_internal}/"), Err("::1 is a loopback address")),
        (format!("http://[::ffff:127.0.0.1]:{p_internal}/"), Err("loopback")),
        (format!("http://localhost:{p_internal}/"), Err("localhost resolves to")),
        ("http://10.0.0.1/".into(), Err("10.0.0.1 is a private network address")),
        ("http://100.64.0.1/".into(), Err("carrier-grade NAT")),
        (format!("http://2130706433:{p_internal}/"), Err("127.0.0.1 is a loopback address")),
        ("http://0.0.0.0/".into(), Err("unspecified")),
        (format!("http://{allowed}/to-metadata"), Err("169.254.169.254 is a link-local address")),
        (format!("http://{allowed}/to-internal"), Err("127.0.0.1 is a loopback address")),
        (format!("http://{allowed}/to-localhost"), Err("localhost resolves to")),
        ("file:///etc/passwd".into(), Err("scheme \"file\"")),
    ];
    let mut ids = Vec::new();
    for (url, _) in &cases {
        let body = json!({"kind": "http.request", "payload": {"url": url}, "max_attempts": 3});
        let (status, job) = read(helix.api(Method::POST, "/api/v1/jobs").json(&body).send().await?).await;
        assert_eq!(status, 201, "{job}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for ((url, expected), id) in cases.iter().zip(&ids) {
        let job = rest_job(&helix, id, |j| matches!(j["state"].as_str(), Some("completed" | "dead"))).await?;
        match expected {
            Ok(body) => {
                assert_eq!((&job["state"], &job["result"]["body"]), (&json!("completed"), &json!(body)), "{url}: {job}")
            }
            Err(reason) => {
                let error = job["last_error"].as_str().unwrap_or_default();
                // refused at once: a retry could not change the answer
                assert_eq!((&job["state"], &job["attempt"]), (&json!("dead"), &json!(1)), "{url}: {job}");
                assert!(error.contains(reason) && error.contains("refused"), "{url}: {error}");
                assert!(!error.contains("internal-secret"), "{url}: {error}");
            }
        }
    }
    helix.stop().await;
    Ok(())
}
