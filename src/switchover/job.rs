//! Job records: what a switchover or failover did, step by step, for the admin API.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Under way.
    Running,
    /// Done.
    Succeeded,
    /// Failed; see `error`.
    Failed,
    /// Undone; see `error`.
    RolledBack,
}

/// One step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What the step does.
    pub name: String,
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// End, milliseconds since the Unix epoch (absent while running).
    pub ended_ms: Option<u64>,
    /// Duration in milliseconds.
    pub duration_ms: Option<f64>,
    /// What happened.
    pub detail: String,
}

/// A job as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// Id.
    pub id: String,
    /// `switchover`, `failover` or `drill`.
    pub kind: String,
    /// The primary before.
    pub from: Option<String>,
    /// The intended primary.
    pub target: String,
    /// State.
    pub state: JobState,
    /// Steps so far.
    pub steps: Vec<Step>,
    /// Why it failed or was rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Writes held during the job.
    pub held_writes: u64,
    /// The longest any write was held, in milliseconds.
    pub longest_hold_ms: f64,
    /// Failover only: the standby's lag when the primary failed (possible data loss).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub possible_loss_ms: Option<u64>,
    /// Failover only: rows acknowledged by the old primary that the new one had not applied
    /// (counted from the writes switchyard saw; `None` when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub possible_loss_rows: Option<u64>,
    /// Failover only: writes the old primary acknowledged after the failover had decided to
    /// fence it. Their clients were told the outcome is unknown (`DEADLINE_EXCEEDED`), because
    /// the promoted cluster does not have them. Live: writes in flight to the old primary may
    /// be answered after the job has ended.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "counter")]
    pub late_acks: Option<Arc<std::sync::atomic::AtomicU64>>,
}

fn counter<S: serde::Serializer>(c: &Option<Arc<std::sync::atomic::AtomicU64>>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_u64(c.load(std::sync::atomic::Ordering::Relaxed)),
        None => s.serialize_none(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A job in progress: appends steps to its record in the registry.
#[derive(Debug)]
pub struct JobLog {
    jobs: Arc<Jobs>,
    id: String,
    step_start: Option<Instant>,
    nested: bool,
}

impl JobLog {
    /// Starts a step.
    pub fn step(&mut self, name: &str) {
        self.step_start = Some(Instant::now());
        let s =
            Step { name: name.into(), started_ms: unix_ms(), ended_ms: None, duration_ms: None, detail: String::new() };
        self.jobs.update(&self.id, |j| j.steps.push(s));
        tracing::info!(job = %self.id, step = name, "job step");
    }

    /// Ends the current step.
    pub fn done(&mut self, detail: impl Into<String>) {
        let d = self.step_start.take().map(|s| s.elapsed().as_secs_f64() * 1e3);
        let detail = detail.into();
        self.jobs.update(&self.id, |j| {
            if let Some(s) = j.steps.last_mut() {
                s.ended_ms = Some(unix_ms());
                s.duration_ms = d;
                s.detail = detail;
            }
        });
    }

    /// Edits the record.
    pub fn edit(&self, f: impl FnOnce(&mut JobRecord)) {
        self.jobs.update(&self.id, f);
    }

    /// Ends the job.
    pub fn finish(&mut self, state: JobState, error: Option<String>) {
        if self.step_start.is_some() {
            self.done(error.clone().unwrap_or_default());
        }
        self.jobs.update(&self.id, |j| {
            j.state = state;
            j.error = error;
        });
        if !self.nested {
            self.jobs.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    /// The job id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Every job since start (the newest 100), and which one runs.
#[derive(Debug, Default)]
pub struct Jobs {
    // Short sections only.
    list: Mutex<Vec<JobRecord>>,
    running: Mutex<Option<String>>,
}

impl Jobs {
    /// Registers a new job unless one is running.
    pub fn begin(self: &Arc<Self>, kind: &str, from: Option<String>, target: &str) -> Result<JobLog, String> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = running.as_ref() {
            return Err(format!("job {id} is running"));
        }
        let id = format!("{kind}-{}-{:04x}", unix_ms(), fastrand::u16(..));
        *running = Some(id.clone());
        drop(running);
        Ok(self.record(id, kind, from, target))
    }

    /// Registers a job that runs inside another (a drill's switchovers).
    pub fn begin_nested(self: &Arc<Self>, kind: &str, from: Option<String>, target: &str) -> JobLog {
        let id = format!("{kind}-{}-{:04x}", unix_ms(), fastrand::u16(..));
        let mut log = self.record(id, kind, from, target);
        log.nested = true;
        log
    }

    fn record(self: &Arc<Self>, id: String, kind: &str, from: Option<String>, target: &str) -> JobLog {
        let rec = JobRecord {
            id: id.clone(),
            kind: kind.into(),
            from,
            target: target.into(),
            state: JobState::Running,
            steps: Vec::new(),
            error: None,
            held_writes: 0,
            longest_hold_ms: 0.0,
            possible_loss_ms: None,
            possible_loss_rows: None,
            late_acks: None,
        };
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.push(rec);
        if list.len() > 100 {
            list.remove(0);
        }
        JobLog { jobs: self.clone(), id, step_start: None, nested: false }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut JobRecord)) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = list.iter_mut().find(|j| j.id == id) {
            f(j);
        }
    }

    /// One job.
    pub fn get(&self, id: &str) -> Option<JobRecord> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|j| j.id == id).cloned()
    }

    /// Every job, oldest first.
    pub fn all(&self) -> Vec<JobRecord> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The running job's id.
    pub fn running(&self) -> Option<String> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
