//! The failover drill: switch over to a standby, prove it takes a write and serves a read,
//! switch back, and time every step. The Milvus guides tell operators to rehearse failover
//! before they need it; this makes the rehearsal one command.

use std::time::Duration;

use super::job::{JobLog, JobState};
use super::{Refusal, run};
use crate::control::Control;
use crate::grpc::client::{CallOptions, unary};
use crate::proto::common::Status;
use crate::proto::milvus::{CreateDatabaseRequest, DropDatabaseRequest, ListDatabasesRequest, ListDatabasesResponse};

/// Runs a drill to `target` and back.
pub async fn drill(c: &Control, jobs: &std::sync::Arc<super::Jobs>, mut log: JobLog, target: String) {
    let from = c.topology().primary.clone().unwrap_or_default();

    log.step(&format!("switch over to {target}"));
    match switch(c, jobs, &target, &from).await {
        Ok(detail) => log.done(detail),
        Err(e) => return log.finish(JobState::Failed, Some(e)),
    }

    log.step(&format!("write and read on {target}"));
    let check = write_and_read(c, &target).await;
    match &check {
        Ok(d) => log.done(d.clone()),
        Err(e) => log.done(format!("FAILED: {e}")),
    }

    log.step(&format!("switch back to {from}"));
    match switch(c, jobs, &from, &target).await {
        Ok(detail) => log.done(detail),
        Err(e) => return log.finish(JobState::Failed, Some(e)),
    }
    match check {
        Ok(_) => log.finish(JobState::Succeeded, None),
        Err(e) => log.finish(JobState::Failed, Some(format!("{target} failed the write/read check: {e}"))),
    }
}

async fn switch(c: &Control, jobs: &std::sync::Arc<super::Jobs>, to: &str, from: &str) -> Result<String, String> {
    let plan = run::preconditions(c, to, Some(from)).await.map_err(|Refusal(r)| format!("switchover refused: {r}"))?;
    let sub = jobs.begin_nested("switchover", plan.from.clone(), to);
    let id = sub.id().to_string();
    run::run(c, sub, plan).await;
    let rec = jobs.get(&id).ok_or("switchover record lost")?;
    if rec.state != JobState::Succeeded {
        return Err(format!("switchover {id} ended {:?}: {}", rec.state, rec.error.unwrap_or_default()));
    }
    let total: f64 = rec.steps.iter().filter_map(|s| s.duration_ms).sum();
    Ok(format!("job {id}: {total:.1} ms, {} writes held, longest hold {:.1} ms", rec.held_writes, rec.longest_hold_ms))
}

/// Creates a scratch database on the new primary, lists it back, and drops it.
async fn write_and_read(c: &Control, target: &str) -> Result<String, String> {
    let cl = c.cluster(target).ok_or("cluster gone")?;
    let opts = CallOptions::timeout(Duration::from_secs(10)).with_token(cl.token());
    let name = format!("switchyard_drill_{:08x}", fastrand::u32(..));
    let ok = |st: Status, what: &str| {
        if st.code == 0 && st.error_code == 0 { Ok(()) } else { Err(format!("{what}: {} ({})", st.reason, st.code)) }
    };
    let t0 = std::time::Instant::now();
    let st: Status = unary(&cl.upstream, "CreateDatabase", &CreateDatabaseRequest { db_name: name.clone() }, &opts)
        .await
        .map_err(|e| format!("CreateDatabase: {e}"))?;
    ok(st, "CreateDatabase")?;
    let write_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = std::time::Instant::now();
    let list: ListDatabasesResponse = unary(&cl.upstream, "ListDatabases", &ListDatabasesRequest {}, &opts)
        .await
        .map_err(|e| format!("ListDatabases: {e}"))?;
    let read_ms = t1.elapsed().as_secs_f64() * 1e3;
    let found = list.db_names.contains(&name);
    let st: Status = unary(&cl.upstream, "DropDatabase", &DropDatabaseRequest { db_name: name.clone() }, &opts)
        .await
        .map_err(|e| format!("DropDatabase: {e}"))?;
    ok(st, "DropDatabase")?;
    if !found {
        return Err(format!("database {name} written on {target} was not listed back"));
    }
    Ok(format!("write {write_ms:.1} ms, read {read_ms:.1} ms (scratch database {name}, dropped)"))
}
