//! StopMatcher tests.

use hearth_sampling::{Sampler, SamplingParams, StopMatcher, StopOutcome};

fn stops(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

/// Feed all chunks; return (everything emitted incl. flush, stopped).
fn run(stop_list: &[&str], chunks: &[&str]) -> (String, bool) {
    let mut m = StopMatcher::new(&stops(stop_list));
    let mut out = String::new();
    let mut stopped = false;
    for c in chunks {
        let o = m.push(c);
        out.push_str(&o.emit);
        stopped |= o.stopped;
    }
    out.push_str(&m.flush());
    (out, stopped)
}

#[test]
fn stop_split_across_chunks() {
    let mut m = StopMatcher::new(&stops(&["llo"]));
    assert_eq!(
        m.push("Hel"),
        StopOutcome {
            emit: "He".into(),
            stopped: false
        }
    );
    assert_eq!(
        m.push("lo world"),
        StopOutcome {
            emit: String::new(),
            stopped: true
        }
    );
    assert!(m.is_stopped());
    assert_eq!(m.matched(), Some("llo"));
    // After stopping nothing more is emitted.
    assert_eq!(
        m.push("more"),
        StopOutcome {
            emit: String::new(),
            stopped: true
        }
    );
    assert_eq!(m.flush(), "");
}

#[test]
fn holds_back_possible_prefix_then_releases_it() {
    let mut m = StopMatcher::new(&stops(&["</end>"]));
    let o = m.push("abc</e");
    assert_eq!(o.emit, "abc");
    assert!(!o.stopped);
    // Not the stop after all: the held text comes out.
    let o = m.push("x");
    assert_eq!(o.emit, "</ex");
    assert!(!o.stopped);
    // A held prefix at end of stream is returned by flush.
    assert_eq!(m.push("<").emit, "");
    assert_eq!(m.flush(), "<");
}

#[test]
fn stop_one_byte_at_a_time() {
    let text = "The answer is 42.\n\nUser: hi";
    let chunks: Vec<String> = text.chars().map(String::from).collect();
    let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
    assert_eq!(
        run(&["\n\nUser:"], &refs),
        ("The answer is 42.".to_string(), true)
    );
}

#[test]
fn multiple_stops_earliest_wins() {
    let (out, stopped) = run(&["STOP", "END"], &["abc EN", "D def STOP"]);
    assert_eq!((out.as_str(), stopped), ("abc ", true));
    // Both in one chunk: the earlier start wins regardless of list order.
    let mut m = StopMatcher::new(&stops(&["zz", "b"]));
    let o = m.push("abzz");
    assert_eq!(o.emit, "a");
    assert_eq!(m.matched(), Some("b"));
    // Overlapping stops with a shared prefix.
    assert_eq!(
        run(&["abcd", "bc"], &["xab", "cd"]),
        ("x".to_string(), true)
    );
    assert_eq!(
        run(&["abcd", "bc"], &["xab", "ce"]),
        ("xa".to_string(), true)
    );
}

#[test]
fn emits_everything_when_no_stop() {
    let chunks = ["Hello", ", wor", "ld! ", "llx", "ll"];
    let (out, stopped) = run(&["llo!"], &chunks);
    assert_eq!((out.as_str(), stopped), ("Hello, world! llxll", false));
    // No stops at all: everything is emitted immediately.
    let mut m = StopMatcher::new(&[]);
    assert_eq!(m.push("abc").emit, "abc");
    assert_eq!(m.flush(), "");
    // Empty stop strings are ignored.
    let (out, stopped) = run(&[""], &["abc"]);
    assert_eq!((out.as_str(), stopped), ("abc", false));
}

#[test]
fn never_emits_stop_text_for_any_chunking() {
    let text = "alpha <|im_end|> omega";
    let stop = "<|im_end|>";
    // Every way of cutting the text into two or three chunks.
    for i in 0..=text.len() {
        for j in i..=text.len() {
            let (out, stopped) = run(&[stop], &[&text[..i], &text[i..j], &text[j..]]);
            assert!(stopped, "cut at {i},{j}");
            assert_eq!(out, "alpha ", "cut at {i},{j}");
        }
    }
}

#[test]
fn multibyte_text_is_split_on_char_boundaries() {
    // "é" is 2 bytes; stop "éé!" shares a prefix with the text.
    let (out, stopped) = run(&["éé!"], &["caféé", "é", "?"]);
    assert_eq!((out.as_str(), stopped), ("cafééé?", false));
    let (out, stopped) = run(&["éé!"], &["café", "é!", "tail"]);
    assert_eq!((out.as_str(), stopped), ("caf", true));
}

#[test]
fn sampler_builds_matcher_from_params() {
    let s = Sampler::new(SamplingParams {
        stop: stops(&["###"]),
        ..SamplingParams::default()
    })
    .unwrap();
    let mut m = s.stop_matcher();
    assert_eq!(m.push("a#").emit, "a");
    assert!(m.push("##b").stopped);
}
