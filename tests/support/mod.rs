//! Test support: milvus-lite backends and `milvus-standin` processes on ephemeral ports.
//!
//! Every process is killed when its handle is dropped, so a failing test leaves nothing
//! running. milvus-lite comes from the project's venv (`<repo>/.venv`, or `SWITCHYARD_VENV`);
//! [`Lite::start`] returns `None` when it is not installed, and tests say so and stop.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a process may take to print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// The venv with milvus-lite.
pub fn venv() -> PathBuf {
    std::env::var_os("SWITCHYARD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"))
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process, killed on drop, whose stdout lines arrive on a channel.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: &Path) -> Proc {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).expect("log dir");
        }
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The first stdout line for which `pred` holds.
    fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(e) => panic!("no ready line: {e} (exit: {:?})", self.child.try_wait()),
            }
        }
    }

    /// Kills the process (SIGKILL: a crash, as far as the process can tell).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A milvus-lite server on 127.0.0.1.
pub struct Lite {
    proc: Proc,
    pub port: u16,
}

impl Lite {
    /// Starts one with its data under `dir`; `None` when milvus-lite is not installed.
    pub fn start(dir: &Path) -> Option<Lite> {
        let exe = venv().join("bin").join("milvus-lite");
        if !exe.exists() {
            return None;
        }
        let port = free_port();
        let mut cmd = Command::new(exe);
        cmd.args(["server", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--host", "127.0.0.1", "--port"])
            .arg(port.to_string());
        let mut proc = Proc::spawn(&mut cmd, &dir.join("milvus-lite.log"));
        proc.wait_line(|l| l.contains("listening on"));
        wait_for("milvus-lite port", START_TIMEOUT, || TcpStream::connect(("127.0.0.1", port)).ok());
        Some(Lite { proc, port })
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A `milvus-standin` process.
pub struct Standin {
    proc: Proc,
    pub cluster_id: String,
    pub grpc: SocketAddr,
    pub control: SocketAddr,
    backend: String,
    state_dir: Option<PathBuf>,
    log: PathBuf,
}

impl Standin {
    /// Starts a stand-in on ephemeral ports.
    pub fn start(cluster_id: &str, backend: &str, state_dir: Option<&Path>, log_dir: &Path) -> Standin {
        Self::spawn(cluster_id, backend, state_dir, log_dir.join(format!("standin-{cluster_id}.log")), None)
    }

    fn spawn(
        cluster_id: &str,
        backend: &str,
        state_dir: Option<&Path>,
        log: PathBuf,
        ports: Option<(SocketAddr, SocketAddr)>,
    ) -> Standin {
        let (listen, control) =
            ports.map(|(g, c)| (g.to_string(), c.to_string())).unwrap_or(("127.0.0.1:0".into(), "127.0.0.1:0".into()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_milvus-standin"));
        cmd.args([
            "--cluster-id",
            cluster_id,
            "--listen",
            &listen,
            "--backend",
            backend,
            "--pchannels",
            "4",
            "--control",
            &control,
        ]);
        if let Some(d) = state_dir {
            cmd.arg("--state-dir").arg(d);
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        let mut proc = Proc::spawn(&mut cmd, &log);
        let line = proc.wait_line(|l| l.starts_with(&format!("milvus-standin {cluster_id} listening on ")));
        let words: Vec<&str> = line.split_whitespace().collect();
        let grpc = words[4].parse().expect("grpc addr");
        let control = words[7].parse().expect("control addr");
        Standin {
            proc,
            cluster_id: cluster_id.into(),
            grpc,
            control,
            backend: backend.into(),
            state_dir: state_dir.map(Path::to_path_buf),
            log,
        }
    }

    /// Kills the process and starts it again on the same ports with the same flags.
    pub fn restart(&mut self) {
        self.proc.kill();
        let again = Self::spawn(
            &self.cluster_id,
            &self.backend,
            self.state_dir.as_deref(),
            self.log.clone(),
            Some((self.grpc, self.control)),
        );
        *self = again;
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn pchannels(&self) -> Vec<String> {
        (0..4).map(|i| format!("{}-rootcoord-dml_{i}", self.cluster_id)).collect()
    }

    /// `GET /state` on the control port.
    pub fn state(&self) -> serde_json::Value {
        let mut s = TcpStream::connect(self.control).expect("control port");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        write!(s, "GET /state HTTP/1.0\r\nHost: standin\r\n\r\n").expect("request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("response");
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("bad /state answer {raw:?}: {e}"))
    }
}
