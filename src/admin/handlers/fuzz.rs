//! Property tests of the bodies the admin API parses (tests/fuzz.rs has the rest).

use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> std::result::Result<(), TestCaseError>) {
    let cases = std::env::var("SWITCHYARD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let start = std::time::Instant::now();
    let result = runner.run(&strategy, test);
    let secs = start.elapsed().as_secs_f64();
    eprintln!("fuzz {name}: {cases} cases in {secs:.2} s ({:.0} cases/s)", f64::from(cases) / secs.max(1e-9));
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// JSON values, with the bodies' own field names as likely keys.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![Just("10s".to_string()), "\\PC{0,12}"].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        let key = prop_oneof![
            prop::sample::select(vec!["target", "expected_primary", "timeout"]).prop_map(String::from),
            "[a-z_]{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What serde must make of a value for a struct of `fields` (name, required): the field
/// values, or what the error may blame (a field, or an unknown key in backquotes).
fn model(v: &Value, fields: &[(&str, bool)]) -> std::result::Result<Vec<Option<String>>, Vec<String>> {
    let slot = |x: Option<&Value>, required: bool| match x {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        None | Some(Value::Null) if !required => Ok(None),
        _ => Err(()),
    };
    match v {
        Value::Object(m) => {
            // serde reports the first bad or unknown field in the input's order.
            let mut blame: Vec<String> = m
                .iter()
                .filter_map(|(k, x)| match fields.iter().find(|(f, _)| f == k) {
                    None => Some(format!("`{k}`")),
                    Some((_, req)) => slot(Some(x), *req).is_err().then(|| k.clone()),
                })
                .collect();
            if blame.is_empty() {
                blame =
                    fields.iter().filter(|(f, req)| *req && !m.contains_key(*f)).map(|(f, _)| f.to_string()).collect();
            }
            if blame.is_empty() {
                Ok(fields.iter().map(|(f, req)| slot(m.get(*f), *req).unwrap_or_default()).collect())
            } else {
                Err(blame)
            }
        }
        // serde also takes a struct as an array of its fields, in order.
        Value::Array(a) if a.len() == fields.len() => {
            fields.iter().zip(a).map(|((_, req), x)| slot(Some(x), *req).map_err(|_| vec![])).collect()
        }
        _ => Err(vec![]),
    }
}

/// A rejection says where: the line and column, and the field when the model names one.
fn check_rejection(
    e: &axum::extract::rejection::JsonRejection,
    blame: &[String],
) -> std::result::Result<(), TestCaseError> {
    let text = e.body_text();
    prop_assert!(e.status() == StatusCode::BAD_REQUEST || e.status() == StatusCode::UNPROCESSABLE_ENTITY);
    prop_assert!(text.contains(" line ") && text.contains(" column "), "{}", text);
    prop_assert!(
        blame.is_empty() || blame.iter().any(|f| text.contains(f.as_str())),
        "{} blames none of {:?}",
        text,
        blame
    );
    Ok(())
}

#[test]
fn bodies_of_any_json_value_match_serde_model() {
    fuzz("admin_json_values", json(), |v| {
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        match (Json::<SwitchoverBody>::from_bytes(&bytes), model(&v, &[("target", true), ("expected_primary", false)]))
        {
            (Ok(Json(b)), Ok(want)) => prop_assert_eq!(vec![Some(b.target), b.expected_primary], want),
            (Err(e), Err(blame)) => check_rejection(&e, &blame)?,
            (got, want) => prop_assert!(false, "switchover {:?}, model {:?}", got.map(|j| j.0), want),
        }
        match (Json::<TargetBody>::from_bytes(&bytes), model(&v, &[("target", false)])) {
            (Ok(Json(b)), Ok(want)) => prop_assert_eq!(vec![b.target], want),
            (Err(e), Err(blame)) => check_rejection(&e, &blame)?,
            (got, want) => prop_assert!(false, "failover {:?}, model {:?}", got.map(|j| j.0), want),
        }
        match (Json::<PauseBody>::from_bytes(&bytes), model(&v, &[("timeout", true)])) {
            (Ok(Json(b)), Ok(want)) => {
                prop_assert_eq!(vec![Some(b.timeout.clone())], want);
                if let Ok(d) = pause_timeout(&b.timeout) {
                    prop_assert!(d >= Duration::from_millis(1) && d <= Duration::from_secs(86400));
                }
            }
            (Err(e), Err(blame)) => check_rejection(&e, &blame)?,
            (got, want) => prop_assert!(false, "pause {:?}, model {:?}", got.map(|j| j.0), want),
        }
        Ok(())
    });
}

#[test]
fn bodies_of_any_bytes_never_panic() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        // Valid bodies, cut short or with a byte changed.
        (
            prop::sample::select(vec![
                r#"{"target": "b", "expected_primary": "a"}"#,
                r#"{"target": null}"#,
                r#"{"timeout": "30s"}"#,
                r#"["b", null]"#,
            ]),
            any::<prop::sample::Index>(),
            any::<u8>(),
            any::<bool>(),
        )
            .prop_map(|(body, at, x, cut)| {
                let mut b = body.as_bytes().to_vec();
                let i = at.index(b.len());
                if cut {
                    b.truncate(i)
                } else {
                    b[i] = x
                }
                b
            }),
    ];
    fuzz("admin_json_bytes", bytes, |b| {
        let valid = serde_json::from_slice::<Value>(&b).is_ok();
        let results = [
            Json::<SwitchoverBody>::from_bytes(&b).err(),
            Json::<TargetBody>::from_bytes(&b).err(),
            Json::<PauseBody>::from_bytes(&b).err(),
        ];
        for e in results.iter().flatten() {
            check_rejection(e, &[])?;
        }
        // Invalid JSON is never taken (a type error may be reported before trailing bytes).
        if !valid {
            prop_assert!(results.iter().all(Option::is_some));
        }
        Ok(())
    });
}

#[test]
fn pause_timeout_is_within_bounds_or_refused() {
    let units =
        [("us", 1_000u128), ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)];
    let text = prop_oneof![
        "\\PC{0,16}".prop_map(|s| (s, None)),
        // Around both bounds in each unit, and anywhere.
        (
            prop_oneof![
                0u64..2000,
                20u64..30,
                1430u64..1450,
                86_390u64..86_410,
                86_399_000u64..86_401_000,
                any::<u64>()
            ],
            0usize..5
        )
            .prop_map(move |(n, u)| (format!("{n}{}", units[u].0), Some(u128::from(n) * units[u].1))),
    ];
    fuzz("admin_pause_timeout", text, |(s, nanos)| {
        match pause_timeout(&s) {
            Ok(d) => prop_assert!(d >= Duration::from_millis(1) && d <= Duration::from_secs(86400), "{:?}: {:?}", s, d),
            Err(AdminError(status, code, msg)) => {
                prop_assert_eq!((status, code), (StatusCode::BAD_REQUEST, "bad_request"));
                prop_assert!(msg.contains(&format!("{s:?}")) || msg.contains("between 1ms and 24h"), "{}", msg);
            }
        }
        if let Some(n) = nanos {
            prop_assert_eq!(pause_timeout(&s).is_ok(), (1_000_000..=86_400_000_000_000).contains(&n), "{:?}", s);
        }
        Ok(())
    });
}
