//! `switchyard ctl`: the admin API from the command line.
//!
//! Exit codes: 0 success, 1 the operation failed or was refused (the reason is printed),
//! 2 bad usage or an unreachable admin API.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A ctl command.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Topology, state, and each cluster's role, health and lag.
    Status,
    /// Planned switchover to a standby.
    Switchover {
        /// The new primary.
        #[arg(long = "to")]
        to: String,
        /// Refuse unless this is the primary now.
        #[arg(long = "expect-primary")]
        expect_primary: Option<String>,
        /// Wait for the job to end and print its steps.
        #[arg(long)]
        wait: bool,
    },
    /// Force failover (fences the primary).
    Failover {
        /// The standby to promote (default: the healthy one with the least lag).
        #[arg(long = "to")]
        to: Option<String>,
        /// Wait for the job to end and print its steps.
        #[arg(long)]
        wait: bool,
    },
    /// Job records.
    Jobs {
        /// One job.
        id: Option<String>,
    },
    /// Hold writes; they resume by themselves after DURATION.
    PauseWrites {
        /// How long, e.g. 30s or 5m.
        #[arg(long = "for")]
        duration: String,
    },
    /// Release held writes.
    ResumeWrites,
    /// Take a fenced or rebuilt cluster back as a standby.
    Readmit {
        /// The cluster.
        id: String,
    },
    /// Re-read the config file.
    Reload,
    /// Switch over to ID, check a write and a read there, switch back, print timings.
    Drill {
        /// The standby to drill.
        #[arg(long = "to")]
        to: String,
    },
}

struct Client {
    base: http::Uri,
    token: Option<String>,
}

impl Client {
    async fn call(&self, method: http::Method, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        let host = self.base.host().ok_or("admin URL has no host")?.to_string();
        let port = self.base.port_u16().unwrap_or(80);
        let stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| format!("admin API {} did not answer", self.base))?
                .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.base))?;
        let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(bytes))).map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let v = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
        Ok((status, v))
    }
}

fn error_of(v: &Value) -> String {
    if let Some(errs) = v.get("errors").and_then(Value::as_array) {
        return errs.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n  ");
    }
    v.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| v.to_string())
}

/// Runs a ctl command; returns the exit code.
pub async fn run(admin: &str, token: Option<String>, cmd: CtlCommand) -> u8 {
    let base: http::Uri = match admin.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("bad --admin URL {admin:?}: {e}");
            return 2;
        }
    };
    let c = Client { base, token };
    match exec(&c, cmd).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchyard ctl: {e}");
            2
        }
    }
}

async fn exec(c: &Client, cmd: CtlCommand) -> Result<u8, String> {
    use http::Method as M;
    let (status, v) = match &cmd {
        CtlCommand::Status => {
            let (s, topo) = c.call(M::GET, "/v1/topology", None).await?;
            if s != 200 {
                return Ok(fail(&topo));
            }
            let (_, clusters) = c.call(M::GET, "/v1/clusters", None).await?;
            print_status(&topo, &clusters);
            return Ok(0);
        }
        CtlCommand::Switchover { to, expect_primary, .. } => {
            let body = serde_json::json!({"target": to, "expected_primary": expect_primary});
            c.call(M::POST, "/v1/switchover", Some(body)).await?
        }
        CtlCommand::Failover { to, .. } => {
            c.call(M::POST, "/v1/failover", Some(serde_json::json!({"target": to}))).await?
        }
        CtlCommand::Drill { to } => c.call(M::POST, "/v1/drill", Some(serde_json::json!({"target": to}))).await?,
        CtlCommand::Jobs { id: Some(id) } => c.call(M::GET, &format!("/v1/jobs/{id}"), None).await?,
        CtlCommand::Jobs { id: None } => c.call(M::GET, "/v1/jobs", None).await?,
        CtlCommand::PauseWrites { duration } => {
            c.call(M::POST, "/v1/writes/pause", Some(serde_json::json!({"timeout": duration}))).await?
        }
        CtlCommand::ResumeWrites => c.call(M::POST, "/v1/writes/resume", None).await?,
        CtlCommand::Readmit { id } => c.call(M::POST, &format!("/v1/clusters/{id}/readmit"), None).await?,
        CtlCommand::Reload => c.call(M::POST, "/v1/reload", None).await?,
    };
    if !(200..300).contains(&status) {
        return Ok(fail(&v));
    }
    let wait = match &cmd {
        CtlCommand::Switchover { wait, .. } | CtlCommand::Failover { wait, .. } => *wait,
        CtlCommand::Drill { .. } => true,
        _ => false,
    };
    if let Some(id) = v.get("job_id").and_then(Value::as_str) {
        println!("job {id} started");
        if !wait {
            return Ok(0);
        }
        let job = wait_job(c, id).await?;
        print_job(&job, c).await;
        let ok = job.get("state").and_then(Value::as_str) == Some("succeeded");
        return Ok(if ok { 0 } else { 1 });
    }
    match &cmd {
        CtlCommand::Jobs { id: None } => {
            for j in v.as_array().into_iter().flatten() {
                println!(
                    "{}  {:<10} {:<11} -> {}  {}",
                    j["id"].as_str().unwrap_or(""),
                    j["kind"].as_str().unwrap_or(""),
                    j["state"].as_str().unwrap_or(""),
                    j["target"].as_str().unwrap_or(""),
                    j.get("error").and_then(Value::as_str).unwrap_or("")
                );
            }
        }
        CtlCommand::Jobs { id: Some(_) } => print_job(&v, c).await,
        _ => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
    }
    Ok(0)
}

fn fail(v: &Value) -> u8 {
    eprintln!("refused: {}", error_of(v));
    1
}

async fn wait_job(c: &Client, id: &str) -> Result<Value, String> {
    loop {
        let (s, v) = c.call(http::Method::GET, &format!("/v1/jobs/{id}"), None).await?;
        if s != 200 {
            return Err(error_of(&v));
        }
        if v.get("state").and_then(Value::as_str) != Some("running") {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn print_job(j: &Value, c: &Client) {
    println!(
        "job {} ({}) {} -> {}: {}",
        j["id"].as_str().unwrap_or(""),
        j["kind"].as_str().unwrap_or(""),
        j["from"].as_str().unwrap_or("-"),
        j["target"].as_str().unwrap_or(""),
        j["state"].as_str().unwrap_or("")
    );
    for s in j["steps"].as_array().into_iter().flatten() {
        let ms = s
            .get("duration_ms")
            .and_then(Value::as_f64)
            .map(|d| format!("{d:9.1} ms"))
            .unwrap_or_else(|| "   running".into());
        println!("  {ms}  {}  {}", s["name"].as_str().unwrap_or(""), s["detail"].as_str().unwrap_or(""));
        // A drill's steps name the switchover jobs they ran; show theirs too.
        if let Some(sub) = s["detail"].as_str().and_then(|d| d.strip_prefix("job ")).and_then(|d| d.split(':').next())
            && let Ok((200, sj)) = c.call(http::Method::GET, &format!("/v1/jobs/{sub}"), None).await
        {
            for ss in sj["steps"].as_array().into_iter().flatten() {
                let ms = ss.get("duration_ms").and_then(Value::as_f64).unwrap_or(0.0);
                println!(
                    "      {ms:9.1} ms  {}  {}",
                    ss["name"].as_str().unwrap_or(""),
                    ss["detail"].as_str().unwrap_or("")
                );
            }
        }
    }
    println!(
        "  held writes: {}, longest hold: {:.1} ms",
        j["held_writes"],
        j["longest_hold_ms"].as_f64().unwrap_or(0.0)
    );
    if let Some(l) = j.get("possible_loss_ms").and_then(Value::as_u64) {
        println!("  possible data loss: up to {l} ms of writes");
    }
    if let Some(r) = j.get("possible_loss_rows").and_then(Value::as_u64) {
        println!("  rows acknowledged by the old primary and missing on the new one: {r}");
    }
    if let Some(n) = j.get("late_acks").and_then(Value::as_u64).filter(|n| *n > 0) {
        println!(
            "  writes acknowledged by the fenced old primary after the failover (clients told: outcome unknown): {n}"
        );
    }
    if let Some(e) = j.get("error").and_then(Value::as_str) {
        println!("  error: {e}");
    }
}

fn print_status(topo: &Value, clusters: &Value) {
    println!(
        "state {}  epoch {}  primary {}",
        topo["state"].as_str().unwrap_or("?"),
        topo["epoch"],
        topo["primary"].as_str().unwrap_or("none")
    );
    if let Some(r) = topo.get("reason").and_then(Value::as_str) {
        println!("reason: {r}");
    }
    if let Some(r) = topo.get("held_writes_reason").and_then(Value::as_str) {
        println!("writes held: {r}");
    }
    println!(
        "{:<16} {:<8} {:<6} {:>10} {:>9} {:>10} {:>10}",
        "CLUSTER", "ROLE", "HEALTH", "LAG", "IN-FLIGHT", "READS", "WRITES"
    );
    for c in clusters.as_array().into_iter().flatten() {
        let lag = c.get("lag_ms").and_then(Value::as_u64).map(|l| format!("{l}ms")).unwrap_or_else(|| "-".into());
        // Numbers as strings: a JSON value's Display ignores the width, which broke the columns.
        let num = |k: &str| c.get(k).and_then(Value::as_u64).map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:<8} {:<6} {:>10} {:>9} {:>10} {:>10}",
            c["id"].as_str().unwrap_or(""),
            c["role"].as_str().unwrap_or(""),
            c["health"].as_str().unwrap_or(""),
            lag,
            num("in_flight"),
            num("reads_total"),
            num("writes_total")
        );
    }
}
