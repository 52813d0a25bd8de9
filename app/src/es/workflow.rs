//! Durable workflows (sourced's `DurableWorkflow`, WIP there too): a function of durable
//! steps whose results are stored as events and replayed when the function runs again.
//!
//! ```text
//!  execute(args) ─▶ <name>.started on stream wf-<name>-<uuid>
//!  every message of the stream ─▶ the workflow runs again from the top:
//!    step done before        → its stored output (the step is not invoked again)
//!    first step not done yet → exactly one event, then stop:
//!        not started → step_started;  started → run it → step_complete | step_failed
//!        (+ failed when its attempts reach its retries);  failed before → step_started again
//!    wait(ms) the first time → wait_started(at) → the runtime schedules wait_ended at `at`
//!    end of the function     → complete(output)
//!  handle.wait() polls the stream until complete or failed
//! ```
//!
//! The next event is appended optimistically after the stream's last message
//! ([`Action::AppendAfter`]), so two workers redoing the same step cannot both record it.
//!
//! Step keys are deterministic across processes: the FNV-1a hash of the step name and its
//! canonical JSON arguments (sourced hashes with Ruby's per-process seeded `Array#hash`, so a
//! replay on another worker runs steps again: marked bug). A step is an `async` closure run
//! at most once per attempt; its output must be JSON. The workflow's context
//! ([`Ctx::context`], [`Ctx::set_context`]) is recorded as `context_updated` events.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::es::{Action, BatchResult, GroupSpec, Message};
use ports::{Clock, EventStore, EventStoreError, ReactorStore, SystemClock};
use serde_json::{Value, json};

use super::reactor::{Delivery, Reactor};

/// Why a workflow run stopped early.
#[derive(Debug, Clone, PartialEq)]
pub enum Halt {
    /// One event recorded; the run continues when it is delivered.
    Recorded,
    /// Waiting for a scheduled message.
    Waiting,
    /// The workflow failed for good.
    Failed(String),
}

/// What a workflow run sees: the stream's recorded steps.
#[derive(Debug, Clone)]
pub struct Ctx {
    inner: Arc<Mutex<CtxState>>,
}

#[derive(Debug, Default)]
struct CtxState {
    /// step key → output.
    done: HashMap<String, Value>,
    /// step key → (started since its last failure, failures).
    started: HashMap<String, (bool, u32)>,
    /// wait count → (started at, ended).
    waits: HashMap<u64, (i64, bool)>,
    waits_seen: u64,
    /// The recorded contexts (`context_updated`), in order.
    contexts: Vec<Value>,
    /// `set_context` calls so far in this run.
    contexts_seen: usize,
    /// The one event this run records, if any: (kind suffix, payload).
    emitted: Option<(&'static str, Value)>,
    now_ms: i64,
}

/// The deterministic key of a step: FNV-1a (64 bits) of the name and the canonical JSON of
/// the arguments (objects' keys sorted, as `serde_json` keeps them).
pub fn step_key(name: &str, args: &Value) -> String {
    let text = format!("{name}\u{0}{args}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{name}-{h:016x}")
}

impl Ctx {
    fn emit(&self, kind: &'static str, payload: Value) -> Halt {
        if let Ok(mut s) = self.inner.lock() {
            s.emitted = Some((kind, payload));
        }
        Halt::Recorded
    }

    /// A durable step: its stored output if it completed before; else one event and a halt
    /// (see the module docs). `retries` is the number of attempts before the workflow fails.
    ///
    /// # Errors
    /// A [`Halt`]: propagate it with `?`.
    pub async fn step<F, Fut>(
        &self,
        name: &str,
        args: Value,
        retries: u32,
        f: F,
    ) -> Result<Value, Halt>
    where
        F: FnOnce(Value) -> Fut,
        Fut: Future<Output = Result<Value, String>>,
    {
        let key = step_key(name, &args);
        let (done, started) = {
            let s = self
                .inner
                .lock()
                .map_err(|_| Halt::Failed("poisoned".into()))?;
            (s.done.get(&key).cloned(), s.started.get(&key).copied())
        };
        if let Some(out) = done {
            return Ok(out);
        }
        match started {
            None | Some((false, _)) => Err(self.emit(
                "step_started",
                json!({"key": key, "step_name": name, "args": args}),
            )),
            Some((true, failures)) => match f(args).await {
                Ok(output) => Err(self.emit(
                    "step_complete",
                    json!({"key": key, "step_name": name, "output": output}),
                )),
                Err(e) => {
                    let last = failures + 1 >= retries.max(1);
                    Err(self.emit(
                        "step_failed",
                        json!({"key": key, "step_name": name, "error_message": e, "final": last}),
                    ))
                }
            },
        }
    }

    /// The workflow's context as this run has set it so far ([`Ctx::set_context`]; `Null`
    /// before the first call).
    pub fn context(&self) -> Value {
        self.inner
            .lock()
            .ok()
            .and_then(|s| {
                s.contexts_seen
                    .checked_sub(1)
                    .and_then(|i| s.contexts.get(i).cloned())
            })
            .unwrap_or(Value::Null)
    }

    /// Sets the context durably. Like a step, by position: the n-th call of a run replays
    /// the n-th recorded context (the recorded value wins); a call past the recorded ones
    /// records `context_updated` and halts.
    ///
    /// # Errors
    /// A [`Halt`]: propagate it with `?`.
    pub fn set_context(&self, context: Value) -> Result<(), Halt> {
        let mut s = self
            .inner
            .lock()
            .map_err(|_| Halt::Failed("poisoned".into()))?;
        s.contexts_seen += 1;
        if s.contexts_seen <= s.contexts.len() {
            return Ok(());
        }
        s.emitted = Some(("context_updated", json!({ "context": context })));
        Err(Halt::Recorded)
    }

    /// Waits `ms` milliseconds, durably: scheduled through the housekeeper.
    ///
    /// # Errors
    /// A [`Halt`]: propagate it with `?`.
    pub fn wait(&self, ms: i64) -> Result<(), Halt> {
        let mut s = self
            .inner
            .lock()
            .map_err(|_| Halt::Failed("poisoned".into()))?;
        s.waits_seen += 1;
        let count = s.waits_seen;
        match s.waits.get(&count).copied() {
            Some((_, true)) => Ok(()),
            Some((_, false)) => Err(Halt::Waiting),
            None => {
                let at = s.now_ms + ms;
                s.emitted = Some(("wait_started", json!({"count": count, "at": at})));
                Err(Halt::Recorded)
            }
        }
    }
}

/// A workflow's body: args → output.
pub type WorkflowFn =
    dyn Fn(Ctx, Value) -> Pin<Box<dyn Future<Output = Result<Value, Halt>> + Send>> + Send + Sync;

/// A durable workflow, run as a reactor of group `workflow:<name>`.
pub struct Workflow {
    name: &'static str,
    body: Arc<WorkflowFn>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("name", &self.name)
            .finish()
    }
}

/// A started workflow ([`Workflow::execute`]).
#[derive(Debug, Clone)]
pub struct WorkflowHandle {
    /// Its stream.
    pub stream_id: String,
    name: &'static str,
}

impl WorkflowHandle {
    /// Polls the stream every 50 ms until the workflow completed (its output) or failed
    /// (its error), or `timeout` passes (`None`).
    ///
    /// # Errors
    /// The store's.
    pub async fn wait(
        &self,
        store: &dyn EventStore,
        timeout: Duration,
    ) -> Result<Option<Result<Value, String>>, EventStoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (complete, failed) = (
            format!("{}.complete", self.name),
            format!("{}.failed", self.name),
        );
        loop {
            for m in store.read_stream(&self.stream_id, 0, None).await? {
                let m = m.message;
                if m.kind() == complete {
                    return Ok(Some(Ok(m.payload()["output"].clone())));
                }
                if m.kind() == failed {
                    return Ok(Some(Err(m.payload()["error"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned())));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const KINDS: [&str; 7] = [
    "started",
    "context_updated",
    "step_started",
    "step_complete",
    "step_failed",
    "wait_started",
    "wait_ended",
];

impl Workflow {
    /// A workflow named `name` running `body`.
    pub fn new<F, Fut>(name: &'static str, body: F) -> Self
    where
        F: Fn(Ctx, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Halt>> + Send + 'static,
    {
        Self {
            name,
            body: Arc::new(move |ctx, args| Box::pin(body(ctx, args))),
        }
    }

    fn kind(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.name)
    }

    /// Starts a run: appends `<name>.started` with `args` on a new stream.
    ///
    /// # Errors
    /// The store's.
    pub async fn execute(
        &self,
        store: &dyn EventStore,
        args: Value,
    ) -> Result<WorkflowHandle, EventStoreError> {
        let stream_id = format!("wf-{}-{}", self.name, uuid::Uuid::new_v4().simple());
        let m = Message::new(
            self.kind("started"),
            stream_id.as_str(),
            json!({ "args": args }),
            SystemClock.now_ms(),
        )
        .map_err(|e| EventStoreError::InvalidAppend(e.to_string()))?;
        store.append_next_to_stream(&stream_id, &[m]).await?;
        Ok(WorkflowHandle {
            stream_id,
            name: self.name,
        })
    }

    /// The action that starts a run keyed by `key` (stream `wf-<name>-<key>`) from a
    /// reactor: appended optimistically as the stream's first message, so it commits with
    /// the reactor's acknowledgement and a redelivered message cannot start a second run
    /// (a run already started is a conflict: check [`Workflow::handle`]'s stream first).
    ///
    /// # Errors
    /// A message error for an invalid key.
    pub fn start_action(&self, key: &str, args: Value, now_ms: i64) -> Result<Action, String> {
        let stream_id = self.handle(key).stream_id;
        let m = Message::new(
            self.kind("started"),
            stream_id.as_str(),
            json!({ "args": args }),
            now_ms,
        )
        .map_err(|e| e.to_string())?
        .with_seq(1);
        Ok(Action::AppendAfter {
            stream_id,
            messages: vec![m],
        })
    }

    /// The handle of the run keyed by `key` ([`Workflow::start_action`]).
    pub fn handle(&self, key: &str) -> WorkflowHandle {
        WorkflowHandle {
            stream_id: format!("wf-{}-{key}", self.name),
            name: self.name,
        }
    }

    /// Rebuilds the recorded steps from `history` and runs the body once: the event to
    /// append (if any) after the stream's last message.
    async fn advance(&self, history: &[Message], now_ms: i64) -> Result<Vec<Action>, String> {
        let Some(last) = history.last() else {
            return Ok(Vec::new());
        };
        let mut state = CtxState {
            now_ms,
            ..CtxState::default()
        };
        let mut args = Value::Null;
        for m in history {
            let p = m.payload();
            let key = p["key"].as_str().unwrap_or_default().to_owned();
            match m
                .kind()
                .strip_prefix(self.name)
                .and_then(|k| k.strip_prefix('.'))
            {
                Some("started") => args = p["args"].clone(),
                Some("context_updated") => state.contexts.push(p["context"].clone()),
                Some("step_started") => state.started.entry(key).or_default().0 = true,
                Some("step_complete") => {
                    state.done.insert(key, p["output"].clone());
                }
                Some("step_failed") => {
                    let e = state.started.entry(key).or_default();
                    *e = (false, e.1 + 1);
                }
                Some("wait_started") => {
                    let count = p["count"].as_u64().unwrap_or(0);
                    state
                        .waits
                        .insert(count, (p["at"].as_i64().unwrap_or(0), false));
                }
                Some("wait_ended") => {
                    let count = p["count"].as_u64().unwrap_or(0);
                    if let Some(w) = state.waits.get_mut(&count) {
                        w.1 = true;
                    }
                }
                Some("complete" | "failed") => return Ok(Vec::new()),
                _ => {}
            }
        }
        let ctx = Ctx {
            inner: Arc::new(Mutex::new(state)),
        };
        let outcome = (self.body)(ctx.clone(), args).await;
        let emitted = ctx.inner.lock().ok().and_then(|mut s| s.emitted.take());
        let event = match (outcome, emitted) {
            (Ok(output), _) => Some(("complete", json!({ "output": output }))),
            (Err(Halt::Failed(e)), _) => Some(("failed", json!({ "error": e }))),
            (Err(Halt::Waiting), _) => None,
            (Err(Halt::Recorded), Some(("step_failed", p))) if p["final"] == json!(true) => {
                // The step's last attempt: record the failure and the workflow's.
                let error = p["error_message"].clone();
                let failed = Message::new(self.kind("step_failed"), last.stream_id(), p, now_ms)
                    .map_err(|e| e.to_string())?
                    .with_seq(last.seq() + 1);
                let wf = Message::new(
                    self.kind("failed"),
                    last.stream_id(),
                    json!({ "error": error }),
                    now_ms,
                )
                .map_err(|e| e.to_string())?
                .with_seq(last.seq() + 2);
                return Ok(vec![Action::AppendAfter {
                    stream_id: last.stream_id().to_owned(),
                    messages: vec![failed, wf],
                }]);
            }
            (Err(Halt::Recorded), emitted) => emitted,
        };
        let mut actions = Vec::new();
        if let Some((suffix, payload)) = event {
            let at = payload["at"].as_i64();
            let count = payload["count"].clone();
            let m = Message::new(self.kind(suffix), last.stream_id(), payload, now_ms)
                .map_err(|e| e.to_string())?
                .with_seq(last.seq() + 1);
            actions.push(Action::AppendAfter {
                stream_id: last.stream_id().to_owned(),
                messages: vec![m],
            });
            if suffix == "wait_started" {
                let ended = Message::new(
                    self.kind("wait_ended"),
                    last.stream_id(),
                    json!({ "count": count }),
                    now_ms,
                )
                .map_err(|e| e.to_string())?;
                actions.push(Action::Schedule {
                    at_ms: at.unwrap_or(now_ms),
                    messages: vec![ended],
                });
            }
        }
        Ok(actions)
    }
}

#[async_trait]
impl Reactor for Workflow {
    fn group(&self) -> GroupSpec {
        GroupSpec {
            group_id: format!("workflow:{}", self.name),
            types: KINDS.iter().map(|k| self.kind(k)).collect(),
            start: domain::es::StartFrom::Beginning,
            batch_size: 50,
        }
    }

    fn wants_history(&self) -> bool {
        true
    }

    /// Only the newest message of the batch matters (the run replays the whole history):
    /// the batch is acknowledged with the one event of that run.
    async fn handle_batch(
        &self,
        _store: &dyn ReactorStore,
        batch: &[Delivery],
        history: &[Message],
        now_ms: i64,
    ) -> BatchResult {
        let mut result = BatchResult::default();
        let Some(newest) = batch.last() else {
            return result;
        };
        if batch.iter().all(|d| d.replaying) {
            result.handled = batch.iter().map(|d| (d.message.id(), vec![])).collect();
            return result;
        }
        match self.advance(history, now_ms).await {
            Ok(actions) => {
                for d in &batch[..batch.len() - 1] {
                    result.handled.push((d.message.id(), vec![]));
                }
                result.handled.push((newest.message.id(), actions));
            }
            Err(e) => result.failed = Some((batch[0].message.id(), e)),
        }
        result
    }
}
