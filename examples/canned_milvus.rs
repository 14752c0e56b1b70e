//! canned_milvus: a fast Milvus gRPC responder that answers every call with a fixed message.
//!
//! It is the upstream for `scripts/bench-compare.sh`: it does as little as a gRPC server can, so
//! what a benchmark measures is the proxy in front of it, not Milvus.
//!
//! ```text
//! cargo run --release --example canned_milvus -- --listen 127.0.0.1:0
//! canned-milvus listening on 127.0.0.1:40123
//! ```
//!
//! - HTTP/2 without TLS (h2c, prior knowledge), one tokio thread.
//! - Every `POST` has its request body read to the end and thrown away, then gets `200`,
//!   `content-type: application/grpc`, one gRPC message and the trailer `grpc-status: 0`:
//!   - `.../Search`: a 261-byte frame holding a valid `milvus.proto.milvus.SearchResults`
//!     (10 hits with ids, scores and a collection name);
//!   - `.../Insert`: a `MutationResult` with an OK status;
//!   - `.../CheckHealth`: healthy, so a proxy's health probes keep the upstream in service;
//!   - anything else: an OK `common.Status`.
//! - `GET /canned/stats` answers JSON counts of finished POSTs: `requests` (all of them),
//!   `request_bytes` (their bodies), and `Search`, `Insert`, `other` by method, so a benchmark
//!   can check that every request it sent reached the upstream, whatever a proxy's own
//!   probes add.
//! - Flow-control windows are large (16 MiB per stream, 64 MiB per connection) so that 8 MiB
//!   insert bodies flow without waiting for window updates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::body::{self, Body, BoxError};
use switchyard::grpc::{self, Code, GrpcStatus};
use switchyard::proto::{common, milvus};
use tokio::net::TcpListener;

/// Size of the canned `Search` answer, gRPC frame header included.
const SEARCH_FRAME_LEN: usize = 261;
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
const MAX_FRAME: u32 = 1 << 20;

static REQUEST_BYTES: AtomicU64 = AtomicU64::new(0);
/// Finished POSTs by [`Call`].
static CALLS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// The calls answered differently, and counted apart.
#[derive(Debug, Clone, Copy)]
enum Call {
    Search = 0,
    Insert = 1,
    CheckHealth = 2,
    Other = 3,
}

impl Call {
    fn of(path: &str) -> Call {
        match path.rsplit_once('/').map_or("", |(_, method)| method) {
            "Search" => Call::Search,
            "Insert" => Call::Insert,
            "CheckHealth" => Call::CheckHealth,
            _ => Call::Other,
        }
    }

    fn count(self) -> u64 {
        CALLS[self as usize].load(Relaxed)
    }
}

#[derive(Debug, Parser)]
#[command(about = "A canned Milvus gRPC upstream for benchmarks")]
struct Args {
    /// Address to listen on; port 0 picks a free port (the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// The answers, framed once at start-up and shared by reference count.
#[derive(Debug, Clone)]
struct Answers {
    search: Bytes,
    insert: Bytes,
    health: Bytes,
    status: Bytes,
    trailers: HeaderMap,
}

impl Answers {
    fn new() -> Self {
        let ok = common::Status::default();
        let insert = milvus::MutationResult {
            status: Some(ok.clone()),
            insert_cnt: 1,
            acknowledged: true,
            timestamp: 449_000_000_000_000_000,
            ..Default::default()
        };
        let health = milvus::CheckHealthResponse { status: Some(ok.clone()), is_healthy: true, reasons: vec![] };
        let mut trailers = HeaderMap::new();
        GrpcStatus::new(Code::Ok, "").write_to(&mut trailers);
        Self {
            search: grpc::frame::frame_bytes(&search_results(SEARCH_FRAME_LEN - grpc::frame::HEADER_LEN)),
            insert: grpc::encode_frame(&insert),
            health: grpc::encode_frame(&health),
            status: grpc::encode_frame(&ok),
            trailers,
        }
    }

    fn for_call(&self, call: Call) -> Bytes {
        match call {
            Call::Search => self.search.clone(),
            Call::Insert => self.insert.clone(),
            Call::CheckHealth => self.health.clone(),
            Call::Other => self.status.clone(),
        }
    }
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(serve(args.listen))
}

async fn serve(addr: SocketAddr) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    // Scripts wait for this exact line (stdout is line-buffered, so it goes out at once).
    println!("canned-milvus listening on {}", listener.local_addr()?);
    let answers = Answers::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("canned-milvus: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let answers = answers.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, answers.clone()));
            let result = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
                .max_concurrent_streams(1024)
                .max_send_buf_size(1 << 20)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                eprintln!("canned-milvus: connection ended with an error: {e}");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, answers: Answers) -> Result<Response<Body>, BoxError> {
    if req.method() == Method::GET && req.uri().path() == "/canned/stats" {
        let all: u64 = CALLS.iter().map(|c| c.load(Relaxed)).sum();
        let json = format!(
            r#"{{"requests":{all},"request_bytes":{},"Search":{},"Insert":{},"other":{}}}"#,
            REQUEST_BYTES.load(Relaxed),
            Call::Search.count(),
            Call::Insert.count(),
            Call::CheckHealth.count() + Call::Other.count(),
        );
        let mut resp = Response::new(body::full(json));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(resp);
    }
    if req.method() != Method::POST {
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return Ok(resp);
    }
    let call = Call::of(req.uri().path());
    let message = answers.for_call(call);
    let mut incoming = req.into_body();
    let mut received = 0u64;
    while let Some(frame) = incoming.frame().await {
        if let Some(data) = frame?.data_ref() {
            received += data.len() as u64;
        }
    }
    CALLS[call as usize].fetch_add(1, Relaxed);
    REQUEST_BYTES.fetch_add(received, Relaxed);

    let mut resp = Response::new(body::boxed(Unary { message: Some(message), trailers: Some(answers.trailers) }));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
    Ok(resp)
}

/// A unary gRPC response body: one data frame, then the trailers.
#[derive(Debug)]
struct Unary {
    message: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl HttpBody for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.message.as_ref().map_or(0, |m| m.len() as u64))
    }
}

// === a SearchResults message, encoded by hand ===
//
// switchyard's proto subset does not declare the search result types, and a benchmark needs
// only bytes that a Milvus SDK would accept. Field numbers follow milvus.proto / schema.proto:
// SearchResults { status = 1; results = 2 (SearchResultData); collection_name = 3 }
// SearchResultData { num_queries = 1; top_k = 2; scores = 4; ids = 5 (IDs); topks = 6 }
// IDs { int_id = 1 (LongArray { data = 1 }) }

/// A `SearchResults` message of exactly `len` bytes (the collection name absorbs the slack).
fn search_results(len: usize) -> Vec<u8> {
    const TOP_K: u64 = 10;
    let mut ids = Vec::new();
    for i in 0..TOP_K {
        varint(&mut ids, 449_000_000_000_000_000 + i);
    }
    let mut long_array = Vec::new();
    field_bytes(&mut long_array, 1, &ids);
    let mut ids_msg = Vec::new();
    field_bytes(&mut ids_msg, 1, &long_array);
    let mut scores = Vec::new();
    for i in 0..TOP_K {
        scores.extend_from_slice(&(0.99f32 - i as f32 * 0.01).to_le_bytes());
    }
    let mut topks = Vec::new();
    varint(&mut topks, TOP_K);

    let mut data = Vec::new();
    field_varint(&mut data, 1, 1);
    field_varint(&mut data, 2, TOP_K);
    field_bytes(&mut data, 4, &scores);
    field_bytes(&mut data, 5, &ids_msg);
    field_bytes(&mut data, 6, &topks);

    let mut out = Vec::with_capacity(len);
    field_bytes(&mut out, 1, &[]);
    field_bytes(&mut out, 2, &data);
    // Field 3, collection_name: key (1 byte) + length (1 byte while < 128) + the name.
    let name_len = len
        .checked_sub(out.len() + 2)
        .filter(|n| *n < 128)
        .expect("search answer size leaves room for a short collection name");
    let name: Vec<u8> = b"canned_bench_collection_".iter().copied().cycle().take(name_len).collect();
    field_bytes(&mut out, 3, &name);
    assert_eq!(out.len(), len);
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    #[test]
    fn search_answer_has_the_requested_size() {
        assert_eq!(super::search_results(256).len(), 256);
        let answers = super::Answers::new();
        assert_eq!(answers.search.len(), super::SEARCH_FRAME_LEN);
        let insert = super::Call::of("/milvus.proto.milvus.MilvusService/Insert");
        assert_eq!(answers.for_call(insert), answers.insert);
        assert!(matches!(super::Call::of("/x.Y/CheckHealth"), super::Call::CheckHealth));
        assert!(matches!(super::Call::of("/x.Y/SearchX"), super::Call::Other));
    }
}
