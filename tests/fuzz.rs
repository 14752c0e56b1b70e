//! Property tests over everything switchyard parses from the outside: gRPC frames, the
//! read-request peek, method lookup and the config file. (The admin JSON bodies are
//! crate-private; their properties live in `src/admin/handlers/fuzz.rs`, the frame decoder's
//! allocation check in `src/grpc/frame.rs`.)
//!
//! Each property runs a fixed number of cases with a random seed and prints its rate:
//!
//! ```text
//! cargo test --test fuzz -- --nocapture                 # default case counts
//! SWITCHYARD_FUZZ_CASES=100000 cargo test --test fuzz   # that many cases for every property
//! PROPTEST_RNG_SEED=42 cargo test --test fuzz           # replay one seed
//! ```
//!
//! No regression files are written (`failure_persistence: None`): a failure prints its
//! shrunk input, which belongs in a plain unit test next to the fix.

use std::cell::Cell;
use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use prost::Message;

use switchyard::config::Config;
use switchyard::config::units::{parse_duration, parse_size};
use switchyard::error::ProxyError;
use switchyard::grpc::frame::{FrameDecoder, FrameError, HEADER_LEN, declared_len, decode_message, frame_bytes};
use switchyard::method::{self, SERVICE_PREFIX};
use switchyard::proto::common::ConsistencyLevel;
use switchyard::proto::milvus::{HybridSearchRequest, QueryRequest, SearchRequest};
use switchyard::proxy::body::{FrameScan, RequestBody};
use switchyard::proxy::read::{self, ReadFields};

/// Runs `test` over `cases` values of `strategy` (or `SWITCHYARD_FUZZ_CASES`), then prints
/// how many cases ran and how fast. Panics with the shrunk input on failure.
fn fuzz<S: Strategy>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let cases = std::env::var("SWITCHYARD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    let mut runner = TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() });
    let ran = Cell::new(0u64);
    let start = Instant::now();
    let result = runner.run(&strategy, |v| {
        ran.set(ran.get() + 1);
        test(v)
    });
    let secs = start.elapsed().as_secs_f64();
    eprintln!("fuzz {name}: {} cases in {:.2} s ({:.0} cases/s)", ran.get(), secs, ran.get() as f64 / secs.max(1e-9));
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Splits `data` at the given cut points (taken modulo its length), in order.
fn split_at_cuts(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| if data.is_empty() { 0 } else { c % (data.len() + 1) }).collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------
// gRPC frames: FrameScan (proxy bodies) and FrameDecoder / declared_len / decode_message.

/// What reading `stream` frame by frame must give: the messages whose header was accepted,
/// the first refusal, and whether the stream stops inside a frame.
#[derive(Debug, PartialEq)]
struct FrameModel {
    messages: Vec<(usize, usize)>, // (offset of the message, its length)
    error: Option<FrameError>,
    mid_frame: bool,
}

fn frame_model(stream: &[u8], limit: usize, check_flag: bool) -> FrameModel {
    let mut pos = 0;
    let mut messages = Vec::new();
    loop {
        if stream.len() - pos < HEADER_LEN {
            return FrameModel { messages, error: None, mid_frame: pos != stream.len() };
        }
        let flag = stream[pos];
        let len = u32::from_be_bytes([stream[pos + 1], stream[pos + 2], stream[pos + 3], stream[pos + 4]]) as usize;
        let error = if check_flag && flag != 0 {
            Some(FrameError::Compressed(flag))
        } else if len > limit {
            Some(FrameError::TooLarge { len, limit })
        } else {
            None
        };
        if error.is_some() {
            return FrameModel { messages, error, mid_frame: true };
        }
        messages.push((pos + HEADER_LEN, len));
        pos += HEADER_LEN + len;
        if pos >= stream.len() {
            return FrameModel { messages, error: None, mid_frame: pos > stream.len() };
        }
    }
}

/// Well-formed frames (some over the limit) or arbitrary bytes, a limit, and cut points.
fn frame_streams() -> impl Strategy<Value = (Vec<u8>, usize, Vec<usize>)> {
    let framed = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..6)
        .prop_map(|msgs| msgs.iter().flat_map(|m| frame_bytes(m).to_vec()).collect::<Vec<u8>>());
    let garbage = prop::collection::vec(any::<u8>(), 0..96);
    // Truncated well-formed streams end inside a header or a message.
    let truncated = (framed.clone(), any::<usize>()).prop_map(|(s, cut)| s[..cut % (s.len() + 1)].to_vec());
    (
        prop_oneof![framed, truncated, garbage],
        prop_oneof![0usize..64, Just(usize::MAX)],
        prop::collection::vec(any::<usize>(), 0..8),
    )
}

#[test]
fn frame_scan_matches_the_model_however_the_bytes_are_split() {
    fuzz("frame_scan_split_anywhere", 4000, frame_streams(), |(stream, limit, cuts)| {
        let want = frame_model(&stream, limit, false);
        let mut scan = FrameScan::new(limit);
        let mut error = None;
        for chunk in split_at_cuts(&stream, &cuts) {
            if let Err(e) = scan.feed(&chunk) {
                error = Some(e);
                break;
            }
        }
        prop_assert_eq!(scan.messages, want.messages.len());
        match (error, want.error) {
            (None, None) => prop_assert_eq!(scan.mid_frame(), want.mid_frame),
            (Some(ProxyError::MessageTooLarge { len: l, limit: m }), Some(FrameError::TooLarge { len, limit })) => {
                prop_assert_eq!((l, m), (len, limit));
            }
            (got, want) => prop_assert!(false, "scan gave {:?}, model {:?}", got, want),
        }
        Ok(())
    });
}

#[test]
fn frame_decoder_matches_the_model_however_the_bytes_are_split() {
    fuzz("frame_decoder_split_anywhere", 4000, frame_streams(), |(stream, limit, cuts)| {
        let want = frame_model(&stream, limit, true);
        let mut dec = FrameDecoder::new(limit);
        let mut got = Vec::new();
        let mut error = None;
        'feed: for chunk in split_at_cuts(&stream, &cuts) {
            dec.push(&chunk);
            loop {
                match dec.next_message() {
                    Ok(Some(m)) => got.push(m),
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break 'feed;
                    }
                }
            }
        }
        // The decoder yields a message once all of it has arrived, and keeps what follows.
        let complete: Vec<&(usize, usize)> =
            want.messages.iter().filter(|(at, len)| at + len <= stream.len()).collect();
        let want_msgs: Vec<&[u8]> = complete.iter().map(|&&(at, len)| &stream[at..at + len]).collect();
        prop_assert_eq!(got.iter().map(|b| &b[..]).collect::<Vec<_>>(), want_msgs);
        prop_assert_eq!(&error, &want.error);
        if error.is_none() {
            let left = stream.len() - complete.last().map_or(0, |&&(at, len)| at + len);
            let expect = if left == 0 { Ok(()) } else { Err(FrameError::Truncated(left)) };
            prop_assert_eq!(dec.finish(), expect);
        }
        Ok(())
    });
}

#[test]
fn declared_len_and_decode_message_never_panic() {
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..32),
        // A header alone, declaring any length: nothing may be reserved for it.
        (any::<u8>(), any::<u32>()).prop_map(|(f, l)| { [[f].as_slice(), &l.to_be_bytes()].concat() }),
    ];
    fuzz("declared_len_decode_message", 4000, (bodies, prop_oneof![0usize..64, Just(usize::MAX)]), |(body, limit)| {
        match declared_len(&body) {
            None => prop_assert!(body.len() < HEADER_LEN),
            Some((flag, len)) => {
                prop_assert_eq!(flag, body[0]);
                prop_assert_eq!(len, u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize);
            }
        }
        let got = decode_message::<SearchRequest>(&body, limit);
        match declared_len(&body) {
            None => prop_assert_eq!(got, Err(FrameError::Truncated(body.len()))),
            Some((flag, _)) if flag != 0 => prop_assert_eq!(got, Err(FrameError::Compressed(flag))),
            Some((_, len)) if len > limit => prop_assert_eq!(got, Err(FrameError::TooLarge { len, limit })),
            Some((_, len)) if body.len() < HEADER_LEN + len => {
                prop_assert_eq!(got, Err(FrameError::Truncated(body.len())))
            }
            Some((_, len)) => {
                let direct = SearchRequest::decode(&body[HEADER_LEN..HEADER_LEN + len]);
                match (got, direct) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(FrameError::Decode(m)), Err(_)) => prop_assert!(!m.is_empty()),
                    (a, b) => prop_assert!(false, "decode_message {:?}, prost {:?}", a, b),
                }
            }
        }
        Ok(())
    });
}

#[test]
fn oversized_headers_are_refused_before_any_body_byte() {
    let case = (any::<u32>(), 0usize..=(64 << 20), 0usize..HEADER_LEN);
    fuzz("oversized_header_refused_at_once", 4000, case, |(len, limit, first)| {
        let header = [[0u8].as_slice(), &len.to_be_bytes()].concat();
        let mut scan = FrameScan::new(limit);
        // The header itself may arrive in two pieces; the verdict comes with its fifth byte.
        prop_assert!(scan.feed(&header[..first]).is_ok());
        let got = scan.feed(&header[first..]);
        if len as usize > limit {
            let refused =
                matches!(got, Err(ProxyError::MessageTooLarge { len: l, limit: m }) if l == len as usize && m == limit);
            prop_assert!(refused, "got {:?}", got);
        } else {
            prop_assert!(got.is_ok());
            prop_assert_eq!(scan.mid_frame(), len > 0);
        }
        let mut dec = FrameDecoder::new(limit);
        dec.push(&header);
        let want = if len as usize > limit {
            Err(FrameError::TooLarge { len: len as usize, limit })
        } else {
            Ok((len == 0).then(Bytes::new))
        };
        prop_assert_eq!(dec.next_message(), want);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The read-request peek: RequestBody::first_message, then read::decode.

const LEVEL_METHODS: [&str; 3] = ["Search", "HybridSearch", "Query"];

/// Fields each request type uses (anything else is an unknown field prost skips).
fn known_tags(method: &str) -> &'static [u32] {
    match method {
        "Search" => &[2, 3, 4, 10, 11, 12, 14, 15],
        _ => &[2, 3, 4, 7, 8, 11, 12],
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Unknown fields as a real client sends them (vectors, dsl, params): varints, fixed
/// 32/64-bit values and length-delimited blobs, at field numbers the request does not use.
fn unknown_fields(method: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let field = (1u32..40, 0u8..4, any::<u64>(), prop::collection::vec(any::<u8>(), 0..40));
    prop::collection::vec(field, 0..5).prop_map(move |fields| {
        let mut out = Vec::new();
        for (tag, wire, n, blob) in fields {
            if known_tags(method).contains(&tag) {
                continue;
            }
            let wire_type = [0u64, 1, 2, 5][wire as usize];
            put_varint(&mut out, (u64::from(tag) << 3) | wire_type);
            match wire_type {
                0 => put_varint(&mut out, n),
                1 => out.extend_from_slice(&n.to_le_bytes()),
                5 => out.extend_from_slice(&(n as u32).to_le_bytes()),
                _ => {
                    put_varint(&mut out, blob.len() as u64);
                    out.extend_from_slice(&blob);
                }
            }
        }
        out
    })
}

fn encode_read(method: &str, db: &str, coll: &str, level: i32, use_default: bool, nq: i64) -> Vec<u8> {
    let (db_name, collection_name) = (db.to_string(), coll.to_string());
    match method {
        "Search" => SearchRequest {
            db_name,
            collection_name,
            consistency_level: level,
            use_default_consistency: use_default,
            nq,
            partition_names: vec!["p".into()],
            ..Default::default()
        }
        .encode_to_vec(),
        "HybridSearch" => HybridSearchRequest {
            db_name,
            collection_name,
            consistency_level: level,
            use_default_consistency: use_default,
            guarantee_timestamp: nq as u64,
            ..Default::default()
        }
        .encode_to_vec(),
        _ => QueryRequest {
            db_name,
            collection_name,
            consistency_level: level,
            use_default_consistency: use_default,
            expr: format!("id > {nq}"),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

/// The body as the proxy has read it ahead: data frames cut anywhere.
fn request_body(stream: &[u8], cuts: &[usize], limit: usize) -> RequestBody {
    let frames: VecDeque<Frame<Bytes>> =
        split_at_cuts(stream, cuts).into_iter().map(|c| Frame::data(Bytes::from(c))).collect();
    RequestBody::from_frames(frames, limit)
}

#[test]
fn peek_round_trips_the_routing_fields() {
    let case = prop::sample::select(LEVEL_METHODS.to_vec()).prop_flat_map(|method| {
        (
            Just(method),
            "\\PC{0,12}",
            "\\PC{0,16}",
            prop_oneof![0i32..5, any::<i32>()],
            any::<bool>(),
            any::<i64>(),
            (unknown_fields(method), unknown_fields(method)),
            prop::collection::vec(any::<usize>(), 0..6),
            prop::collection::vec(any::<u8>(), 0..16), // a second message or trailing bytes
        )
    });
    fuzz("peek_round_trip", 2000, case, |(method, db, coll, level, use_default, nq, (pre, post), cuts, tail)| {
        let msg = [pre, encode_read(method, &db, &coll, level, use_default, nq), post].concat();
        let stream = [frame_bytes(&msg).to_vec(), tail].concat();
        let body = request_body(&stream, &cuts, 1 << 20);
        let first = body.first_message();
        prop_assert_eq!(first.as_deref(), Some(&msg[..]));
        let want = ReadFields {
            db_name: db,
            collection: coll,
            level: ConsistencyLevel::try_from(level).unwrap_or(ConsistencyLevel::Strong),
            use_default,
        };
        prop_assert_eq!(read::decode(method, first.unwrap_or_default()), Some(want));
        Ok(())
    });
}

#[test]
fn peek_of_arbitrary_bytes_never_panics() {
    let methods = prop_oneof![
        prop::sample::select(vec!["Search", "HybridSearch", "Query", "Insert", "search", ""]).prop_map(String::from),
        "\\PC{0,12}",
    ];
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        // A valid request with bytes flipped, cut or appended.
        (prop::sample::select(LEVEL_METHODS.to_vec()), "[a-z]{0,8}", any::<i32>(), any::<(usize, u8)>(), 0usize..64)
            .prop_map(|(m, c, l, (at, x), cut)| {
                let mut v = encode_read(m, "db", &c, l, true, 7);
                if !v.is_empty() {
                    let i = at % v.len();
                    v[i] ^= x;
                }
                v.truncate(cut.max(1).min(v.len()));
                v
            }),
    ];
    fuzz(
        "peek_arbitrary_bytes",
        4000,
        (methods, bytes, prop::collection::vec(any::<usize>(), 0..4)),
        |(m, b, cuts)| {
            let got = read::decode(&m, Bytes::from(b.clone()));
            prop_assert_eq!(read::has_level(&m), LEVEL_METHODS.contains(&m.as_str()));
            if !read::has_level(&m) {
                prop_assert_eq!(got, None);
            }
            // The same bytes as a framed body, however split: first_message is exactly them.
            let stream = frame_bytes(&b);
            let first = request_body(&stream, &cuts, 1 << 20).first_message();
            prop_assert_eq!(first.as_deref(), Some(&b[..]));
            Ok(())
        },
    );
}

#[test]
fn peek_of_huge_declared_lengths_allocates_nothing_for_them() {
    let case = (any::<u32>(), prop::collection::vec(any::<u8>(), 0..32), 1u32..16, any::<u64>());
    fuzz("peek_huge_declared_lengths", 4000, case, |(len, body, tag, claim)| {
        // A frame header claiming up to 4 GiB with a few bytes behind it: no first message.
        let stream = [[0u8].as_slice(), &len.to_be_bytes(), &body].concat();
        let first = request_body(&stream, &[3, 9], usize::MAX).first_message();
        prop_assert_eq!(first.is_some(), body.len() >= len as usize);
        // A length-delimited field claiming up to 2^64 bytes inside the message: no result,
        // and nothing reserved for the claim (prost checks it against what remains).
        let mut msg = Vec::new();
        put_varint(&mut msg, (u64::from(tag) << 3) | 2);
        put_varint(&mut msg, claim.max(body.len() as u64 + 1));
        msg.extend_from_slice(&body);
        for m in LEVEL_METHODS {
            prop_assert_eq!(read::decode(m, Bytes::from(msg.clone())), None);
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Method lookup.

fn paths() -> impl Strategy<Value = String> {
    let names: Vec<&'static str> = method::all().iter().map(|m| m.name).collect();
    let real = prop::sample::select(names);
    prop_oneof![
        "\\PC{0,60}",
        "\\PC{0,20}".prop_map(|s| format!("{SERVICE_PREFIX}{s}")),
        real.clone().prop_map(|n| format!("{SERVICE_PREFIX}{n}")),
        real.clone().prop_map(String::from),
        // One character of a real path inserted, removed or changed (the model decides).
        (real, any::<prop::sample::Index>(), any::<char>(), 0u8..3).prop_map(|(n, at, c, op)| {
            let mut p: Vec<char> = format!("{SERVICE_PREFIX}{n}").chars().collect();
            let i = at.index(p.len());
            match op {
                0 => p.insert(i, c),
                1 => {
                    p.remove(i);
                }
                _ => p[i] = c,
            }
            p.into_iter().collect()
        }),
    ]
}

#[test]
fn lookup_matches_exact_paths_only() {
    let table: Vec<String> = method::all().iter().map(|m| format!("{SERVICE_PREFIX}{}", m.name)).collect();
    fuzz("method_lookup", 10000, paths(), |path| {
        let want = table.iter().position(|p| *p == path).map(|i| &method::all()[i]);
        prop_assert_eq!(method::lookup(&path), want);
        let by_name = method::all().iter().find(|m| m.name == path);
        prop_assert_eq!(method::by_name(&path), by_name);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The config file.

const DURATION_UNITS: [(&str, f64); 5] = [("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
const SIZE_UNITS: [(&str, u64); 10] = [
    ("", 1),
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("x", 0),
];

#[test]
fn durations_and_sizes_parse_or_say_which_text() {
    let text = prop_oneof![
        "\\PC{0,16}",
        "[ ]?[0-9.]{0,30}[ ]?(us|ms|s|m|h|B|KiB|MiB|GiB|KB|kB|MB|GB|x|)[ ]?",
        (
            prop_oneof![0u64..100_000, any::<u64>()],
            prop::sample::select(vec!["us", "ms", "s", "m", "h", "B", "KiB", "GiB", "GB"])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
    ];
    fuzz("config_units", 10000, text, |s| {
        match parse_duration(&s) {
            Ok(d) => {
                let t = s.trim();
                let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
                if t != "0" {
                    let n: f64 = t[..split].parse().unwrap_or(f64::NAN);
                    let unit = DURATION_UNITS.iter().find(|(u, _)| *u == t[split..].trim()).map_or(f64::NAN, |u| u.1);
                    let secs = n * unit;
                    prop_assert!((d.as_secs_f64() - secs).abs() <= secs * 1e-12 + 1e-9, "{:?} gave {:?}", s, d);
                }
            }
            Err(e) => prop_assert!(e.contains(&format!("{s:?}")), "{:?} does not quote the text {:?}", e, s),
        }
        match parse_size(&s) {
            Ok(n) => {
                let t = s.trim();
                let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                let mul = SIZE_UNITS.iter().find(|(u, _)| *u == t[split..].trim()).map_or(0, |u| u.1);
                prop_assert_eq!(t[..split].parse::<u64>().ok().and_then(|v| v.checked_mul(mul)), Some(n));
            }
            Err(e) => prop_assert!(e.contains(&format!("{s:?}")), "{:?} does not quote the text {:?}", e, s),
        }
        Ok(())
    });
}

const SECTIONS: [&str; 8] = ["listener", "admin", "state", "clusters", "routing", "switchover", "failover", "health"];

/// A problem must say where: a line of the file, a key, a section, or the variable.
fn names_a_key_or_line(p: &str) -> bool {
    p.contains(" at line ")
        || p.starts_with("environment variable ")
        || p.starts_with("unknown section [")
        || SECTIONS.iter().any(|s| p.starts_with(s) || p.contains(&format!("`{s}")))
}

fn check_config(text: &str, secrets: &[&str]) -> Result<(), TestCaseError> {
    let Err(e) = Config::from_toml(text, Path::new(".")) else { return Ok(()) };
    prop_assert!(!e.problems.is_empty());
    for p in &e.problems {
        prop_assert!(!p.trim().is_empty(), "an empty problem");
        prop_assert!(names_a_key_or_line(p), "problem names no key or line: {:?}", p);
        for s in secrets {
            prop_assert!(!p.contains(s), "problem quotes a secret: {:?}", p);
        }
    }
    Ok(())
}

/// Values of every kind the file holds, including edge cases of durations and sizes.
fn toml_value() -> impl Strategy<Value = String> {
    let strings = prop_oneof![
        prop::sample::select(vec![
            "127.0.0.1:0",
            "0.0.0.0:19530",
            "[::1]:9100",
            "nowhere",
            "http://127.0.0.1:1",
            "https://h:1",
            "ftp://x",
            "primary",
            "standby",
            "standbys",
            "any",
            "reads",
            "file",
            "etcd",
            "0",
            "10s",
            "500ms",
            "1.5h",
            "250us",
            ".",
            "1e9s",
            "99999999999999999999999h",
            "18446744073709551615s",
            "99999999999999999999GiB",
            "18446744073709551615GiB",
            "256MiB",
            "12 parsecs",
            "",
        ])
        .prop_map(String::from),
        "[0-9.]{0,24}(us|ms|s|m|h|B|KiB|MiB|GiB|KB|MB|GB|x)?",
        "[ !#-\\[\\]-~]{0,24}",
    ];
    let scalar = prop_oneof![
        strings.prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        prop_oneof![Just(0i64), Just(1), Just(2), Just(1024), Just(1025), Just(-1)].prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("1979-05-27T07:32:00Z".to_string()),
    ];
    scalar.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| {
                format!("{{{}}}", kv.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", "))
            }),
        ]
    })
}

/// Every key of every section, once (from the config's own table, so it cannot drift).
static KEYS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    let mut keys: Vec<&'static str> = SECTION_KEYS.iter().flat_map(|(_, ks)| ks.iter().copied()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
});

/// Each section's keys: the config's own table.
const SECTION_KEYS: &[(&str, &[&str])] = switchyard::config::KNOWN_KEYS;

/// A file made of the config's own sections and keys (and some others), with any values.
fn structured_config() -> impl Strategy<Value = String> {
    let section = (0usize..10).prop_flat_map(|i| {
        let (header, own): (String, &'static [&'static str]) = match SECTION_KEYS.get(i) {
            Some(("clusters", keys)) => ("[[clusters]]".into(), keys),
            Some((name, keys)) => (format!("[{name}]"), keys),
            None if i == 8 => ("[[routing]]".into(), SECTION_KEYS[4].1),
            None => ("[extra]".into(), &**KEYS),
        };
        let key = prop_oneof![
            6 => prop::sample::select(own.to_vec()).prop_map(String::from),
            1 => prop::sample::select(KEYS.to_vec()).prop_map(String::from),
            1 => "[a-z_]{1,10}",
        ];
        (Just(header), prop::collection::vec((key, toml_value()), 0..7))
    });
    (prop::collection::vec(("[a-z_]{1,8}", toml_value()), 0..2), prop::collection::vec(section, 0..8)).prop_map(
        |(top, sections)| {
            let mut out = String::new();
            for (k, v) in top {
                out += &format!("{k} = {v}\n");
            }
            for (h, kvs) in sections {
                out += &format!("{h}\n");
                for (k, v) in kvs {
                    out += &format!("{k} = {v}\n");
                }
            }
            out
        },
    )
}

#[test]
fn config_of_arbitrary_text_is_an_error_that_says_where() {
    let text = prop_oneof![
        "\\PC{0,200}",
        "(\\[{1,2}[a-z_.\"]{0,10}\\]{0,2}\n|[a-z_\"]{0,10} ?= ?[^\n]{0,20}\n|#[^\n]{0,10}\n|[ \t\n]{1,3}){0,12}",
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    fuzz("config_arbitrary_text", 1500, text, |t| check_config(&t, &[]));
}

#[test]
fn config_of_the_documented_keys_with_any_values_says_where() {
    fuzz("config_structured", 1500, structured_config(), |t| check_config(&t, &[]));
}

/// Where a secret can be written: the tokens, and a uri's user:password@.
const SECRET: &str = "S3cretW0rd";

fn reference_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.toml");
    std::fs::read_to_string(path).expect("config/switchyard.toml")
}

/// Line edits of the shipped config that leave each secret inside its own value: lines
/// deleted, repeated, moved or inserted, characters inserted or deleted on other lines.
#[derive(Debug, Clone)]
enum Edit {
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index, prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    Insert(prop::sample::Index, String),
    SetValue(prop::sample::Index, String),
    InsertChar(prop::sample::Index, prop::sample::Index, char),
    DeleteChar(prop::sample::Index, prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    use prop::sample::Index;
    let edit = prop_oneof![
        any::<Index>().prop_map(Edit::Delete),
        any::<(Index, Index)>().prop_map(|(a, b)| Edit::Duplicate(a, b)),
        any::<(Index, Index)>().prop_map(|(a, b)| Edit::Swap(a, b)),
        (any::<Index>(), prop::sample::select(KEYS.to_vec()), toml_value())
            .prop_map(|(i, k, v)| Edit::Insert(i, format!("{k} = {v}"))),
        (any::<Index>(), "\\[{1,2}[a-z]{1,10}\\]{1,2}").prop_map(|(i, h)| Edit::Insert(i, h)),
        (any::<Index>(), toml_value()).prop_map(|(i, v)| Edit::SetValue(i, v)),
        (
            any::<Index>(),
            any::<Index>(),
            prop_oneof![
                prop::sample::select(vec!['"', '\'', '=', '[', ']', '\\', '\n', '#', '.', ',', '{', '$']),
                any::<char>()
            ]
        )
            .prop_map(|(l, c, ch)| Edit::InsertChar(l, c, ch)),
        any::<(Index, Index)>().prop_map(|(l, c)| Edit::DeleteChar(l, c)),
        any::<Index>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..5)
}

fn holds_secret(line: &str) -> bool {
    line.contains(SECRET)
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        match e {
            Edit::Delete(i) => {
                lines.remove(i.index(lines.len()));
            }
            Edit::Duplicate(i, to) => {
                let l = lines[i.index(lines.len())].clone();
                lines.insert(to.index(lines.len() + 1), l);
            }
            Edit::Swap(a, b) => {
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
            }
            Edit::Insert(i, l) => lines.insert(i.index(lines.len() + 1), l.clone()),
            Edit::SetValue(i, v) => {
                let n = i.index(lines.len());
                let l = &mut lines[n];
                if let Some((k, _)) = l.split_once(" = ") {
                    *l = format!("{k} = {v}");
                }
            }
            Edit::InsertChar(i, at, c) => {
                let n = i.index(lines.len());
                let l = &mut lines[n];
                if !holds_secret(l) {
                    let mut cs: Vec<char> = l.chars().collect();
                    cs.insert(at.index(cs.len() + 1), *c);
                    *l = cs.into_iter().collect();
                }
            }
            Edit::DeleteChar(i, at) => {
                let n = i.index(lines.len());
                let l = &mut lines[n];
                if !holds_secret(l) && !l.is_empty() {
                    let mut cs: Vec<char> = l.chars().collect();
                    cs.remove(at.index(cs.len()));
                    *l = cs.into_iter().collect();
                }
            }
            Edit::Truncate(i) => lines.truncate(i.index(lines.len()) + 1),
        }
    }
    lines.join("\n")
}

#[test]
fn config_edits_of_the_shipped_file_never_quote_a_secret() {
    let base = reference_config();
    let uris = vec![
        None,
        Some(format!("http://root:{SECRET}@127.0.0.1:19531")),
        Some(format!("root:{SECRET}@127.0.0.1:19531")),
        Some(format!("https://{SECRET}@h:1/x")),
    ];
    let case = (prop::sample::select(uris.clone()), prop::sample::select(uris), edits());
    fuzz("config_shipped_file_edits", 1500, case, |(uri_a, uri_b, edits)| {
        let mut text = base
            .replace("${SWITCHYARD_ADMIN_TOKEN}", &format!("admin-{SECRET}"))
            .replace("\"root:Milvus\"", &format!("\"root:{SECRET}\""));
        if let Some(u) = uri_a {
            text = text.replace("http://127.0.0.1:19531", &u);
        }
        if let Some(u) = uri_b {
            text = text.replace("http://127.0.0.1:19532", &u);
        }
        check_config(&apply(&text, &edits), &[SECRET])
    });
}
