//! Signal parsing: price CSV (line-numbered errors, the repository's hourly traces), price JSON,
//! demand-response events (OpenADR 3 and short form), the bounded HTTP client.

use hearth_energy::signals::dr::{parse_event, DrBook};
use hearth_energy::signals::price::{parse_csv, parse_json, PriceError, Timebase};
use hearth_energy::signals::{http, Latest};
use hearth_energy::DrTarget;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn hourly_index_csv_replays_by_hour_of_year() {
    let s = parse_csv("hour,price\n1,10\n2,20.5\n3,-4\n").unwrap();
    assert_eq!(s.timebase, Timebase::YearIndex);
    assert_eq!(s.step_s, 3600.0);
    // 2026-01-01T01:30Z is the second hour of the year.
    let t = 1_767_225_600.0 + 5400.0;
    assert_eq!(s.at(t), Some(20.5));
    // Cyclic: the fourth hour wraps to the first row.
    assert_eq!(s.at(1_767_225_600.0 + 3.0 * 3600.0), Some(10.0));
    // Five-minute index rows.
    let s = parse_csv("interval5,price\n0,1\n1,2\n").unwrap();
    assert_eq!(s.step_s, 300.0);
    assert_eq!(s.at(1_767_225_600.0 + 310.0), Some(2.0));
}

#[test]
fn timestamp_csv_five_minute() {
    let s = parse_csv(
        "timestamp,usd_per_mwh\n2026-11-24T08:00:00Z,30\n2026-11-24T08:05:00Z,182\n2026-11-24T08:10:00Z,40\n",
    )
    .unwrap();
    assert_eq!(s.step_s, 300.0);
    let t0 = 1_795_478_400.0 + 8.0 * 3600.0;
    assert_eq!(s.at(t0 + 301.0), Some(182.0));
    assert_eq!(s.at(t0 - 1.0), None);
    assert_eq!(s.at(t0 + 900.0), None);
}

#[test]
fn csv_errors_name_the_line() {
    let cases: [(&str, usize, &str); 6] = [
        ("", 1, "empty"),
        ("when,price\n1,2\n", 1, "no time column"),
        ("hour,price\n1,2\n2,abc\n", 3, "not a number"),
        ("hour,price\n1,2\n\n3,4\n5,6\n", 4, "evenly spaced"),
        ("hour,price\n1,2\n1,3\n", 3, "does not increase"),
        ("hour,price\n1,2,3\n", 2, "fields"),
    ];
    for (text, line, needle) in cases {
        match parse_csv(text) {
            Err(PriceError::Csv { line: l, msg }) => {
                assert_eq!(l, line, "{text:?}: {msg}");
                assert!(msg.contains(needle), "{text:?}: {msg}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    assert!(parse_csv("hour,price\n1,1e300\n").is_err());
    assert!(parse_csv(&format!("hour,price\n1,{}\n", "9".repeat(5000))).is_err());
}

#[test]
fn repository_price_traces_parse() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/prices/Price_2018.csv"
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        // The traces are data, not code; the other tests cover the parser.
        return;
    };
    let s = parse_csv(&text).unwrap();
    assert_eq!(s.usd_per_mwh.len(), 8760);
    assert_eq!(s.step_s, 3600.0);
    assert!((s.usd_per_mwh[0] - 32.75470262).abs() < 1e-9);
}

#[test]
fn price_json_and_last_good_value() {
    let u = parse_json(br#"{"usd_per_mwh": 42.5}"#).unwrap();
    assert_eq!(u.usd_per_mwh, 42.5);
    let u = parse_json(
        br#"{"price": 10, "forecast": {"start": "2026-11-24T08:00:00Z", "step_s": 3600, "usd_per_mwh": [10, 20]}}"#,
    )
    .unwrap();
    assert_eq!(u.forecast.unwrap().usd_per_mwh, vec![10.0, 20.0]);
    let mut latest = Latest::default();
    latest.update(
        parse_json(br#"{"usd_per_mwh": 42.5}"#).map(|u| u.usd_per_mwh),
        1.0,
    );
    for bad in [
        &br#"{"usd_per_mwh": "cheap"}"#[..],
        br#"{"usd_per_mwh": 1e9}"#,
        br#"{"usd_per_mwh": 1, "extra": 2}"#,
        br#"not json"#,
        br#"{"usd_per_mwh": 1, "forecast": {"start": 0, "step_s": 1, "usd_per_mwh": [1]}}"#,
    ] {
        let r = parse_json(bad).map(|u| u.usd_per_mwh);
        assert!(r.is_err(), "{}", String::from_utf8_lossy(bad));
        latest.update(r, 2.0);
        assert_eq!(latest.value, Some(42.5));
        assert!(latest.last_error.is_some());
    }
}

#[test]
fn dr_events_openadr_and_short_form() {
    let now = 1000.0;
    let e = parse_event(
        br#"{"id":"evt-1","programID":"p","intervalPeriod":{"start":"1970-01-01T00:20:00Z","duration":"PT1H"},
            "intervals":[{"id":0,"payloads":[{"type":"IMPORT_CAPACITY_LIMIT","values":[5.5]}]}]}"#,
        now,
    )
    .unwrap();
    assert_eq!(e.start_s, 1200.0);
    assert_eq!(e.end_s, 1200.0 + 3600.0);
    assert_eq!(e.target, DrTarget::LimitW(5500.0));
    let e = parse_event(
        br#"{"id":"evt-2","intervalPeriod":{"duration":"PT5M"},"intervals":[{"payloads":[{"type":"SIMPLE","values":[2]}]}]}"#,
        now,
    )
    .unwrap();
    assert_eq!((e.start_s, e.target.clone()), (now, DrTarget::Curtail));
    let e = parse_event(
        br#"{"id":"x","start":"now","duration":"PT30S","target":"curtail"}"#,
        now,
    )
    .unwrap();
    assert_eq!((e.start_s, e.end_s), (now, now + 30.0));
    let e = parse_event(br#"{"id":"y","end":2000,"target":{"limit_kw":2}}"#, now).unwrap();
    assert_eq!((e.end_s, e.target), (2000.0, DrTarget::LimitW(2000.0)));
    for bad in [
        &br#"{"start":"now","duration":"PT1H","target":"curtail"}"#[..],
        br#"{"id":"","duration":"PT1H","target":"curtail"}"#,
        br#"{"id":"a b","duration":"PT1H","target":"curtail"}"#,
        br#"{"id":"z","duration":"PT1H","target":"dance"}"#,
        br#"{"id":"z","target":"curtail"}"#,
        br#"{"id":"z","duration":"P30D","target":"curtail"}"#,
        br#"{"id":"z","duration":"PT1H","target":{"limit_kw":-1}}"#,
        br#"{"id":"z","intervalPeriod":{"duration":"PT1H"},"intervals":[{"payloads":[{"type":"PRICE","values":[1]}]}]}"#,
        br#"[1,2]"#,
    ] {
        assert!(parse_event(bad, now).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn dr_book_replaces_cancels_and_expires() {
    let mut b = DrBook::default();
    let ev = |id: &str, end| hearth_energy::DrEvent {
        id: id.into(),
        start_s: 0.0,
        end_s: end,
        target: DrTarget::Curtail,
    };
    b.upsert(ev("a", 10.0), 0.0).unwrap();
    b.upsert(ev("a", 20.0), 0.0).unwrap();
    b.upsert(ev("b", 5.0), 0.0).unwrap();
    assert_eq!(b.events().len(), 2);
    b.expire(6.0);
    assert_eq!(b.events().len(), 1);
    assert_eq!(b.events()[0].end_s, 20.0);
    assert!(b.cancel("a"));
    assert!(!b.cancel("a"));
    for i in 0..hearth_energy::signals::dr::MAX_EVENTS {
        b.upsert(ev(&format!("e{i}"), 100.0), 0.0).unwrap();
    }
    assert!(b.upsert(ev("one-too-many", 100.0), 0.0).is_err());
}

/// Serves one canned HTTP answer on 127.0.0.1 and returns the URL.
async fn serve_once(answer: Vec<u8>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&answer).await;
        }
    });
    format!("http://{addr}/price")
}

#[tokio::test]
async fn http_client_bodies_and_errors() {
    let t = Duration::from_secs(10);
    let url = serve_once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\n{\"usd_per_mwh\": 42.5}".to_vec(),
    )
    .await;
    let body = http::get(&url, t).await.unwrap();
    assert_eq!(parse_json(&body).unwrap().usd_per_mwh, 42.5);
    let url = serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"p\r\n4\r\nrice\r\n7\r\n\": 7.0}\r\n0\r\n\r\n".to_vec()).await;
    assert_eq!(http::get(&url, t).await.unwrap(), b"{\"price\": 7.0}");
    let url = serve_once(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_vec()).await;
    assert!(matches!(
        http::get(&url, t).await,
        Err(http::HttpError::Status { status: 503, .. })
    ));
    let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', http::MAX_BODY + 1));
    let url = serve_once(big).await;
    assert!(http::get(&url, t).await.is_err());
    // A server that accepts and never answers: a timeout, not a hang.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let c = l.accept().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(c);
    });
    assert!(matches!(
        http::get(&url, Duration::from_millis(300)).await,
        Err(http::HttpError::Timeout(_))
    ));
    hold.abort();
}

mod never_panic {
    use super::*;
    use hearth_energy::signals::time::{parse_duration, parse_timestamp};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every decoder of outside input is total: arbitrary bytes give a value or an error.
        #[test]
        fn decoders_are_total(bytes in proptest::collection::vec(any::<u8>(), 0..512), text in "\\PC{0,200}") {
            let _ = parse_json(&bytes);
            let _ = parse_event(&bytes, 0.0);
            let _ = hearth_energy::agent::parse_ai(&bytes);
            let _ = parse_csv(&text);
            let _ = parse_csv(&format!("hour,price\n{text}"));
            let _ = parse_csv(&format!("timestamp,price\n{text}"));
            let _ = parse_timestamp(&text);
            let _ = parse_duration(&text);
            let _ = parse_event(format!(r#"{{"id":"a","start":"{0}","duration":"{0}","target":"curtail"}}"#, text.replace(['"', '\\'], "")).as_bytes(), 0.0);
        }

        #[test]
        fn timestamp_like_strings_are_total(y in 0u32..10000, rest in "[-0-9:TZ+.]{0,20}") {
            let _ = parse_timestamp(&format!("{y:04}-{rest}"));
            let _ = parse_duration(&format!("P{rest}"));
        }
    }
}
