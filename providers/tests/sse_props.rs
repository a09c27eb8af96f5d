//! Property tests of the SSE parser: any split of a valid stream gives the same events; any bytes are safe.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use switchyard_providers::sse::{SseEvent, SseParser, parse_all};

#[derive(Clone, Debug)]
struct Generated {
    event: Option<String>,
    lines: Vec<String>,
    comment: Option<String>,
}

fn event_strategy() -> impl Strategy<Value = Generated> {
    (
        proptest::option::of("[a-z_]{1,12}"),
        // Data lines: anything but line breaks (colons, spaces, unicode, JSON).
        proptest::collection::vec("[^\r\n]{0,40}", 1..4),
        proptest::option::of("[^\r\n]{0,20}"),
    )
        .prop_map(|(event, lines, comment)| Generated {
            event,
            lines,
            comment,
        })
}

fn render(events: &[Generated], ending: &str, bom: bool) -> Vec<u8> {
    let mut out = String::new();
    if bom {
        out.push('\u{FEFF}');
    }
    for e in events {
        if let Some(comment) = &e.comment {
            out.push_str(&format!(":{comment}{ending}"));
        }
        if let Some(name) = &e.event {
            out.push_str(&format!("event: {name}{ending}"));
        }
        for line in &e.lines {
            out.push_str(&format!("data: {line}{ending}"));
        }
        out.push_str(ending);
    }
    out.into_bytes()
}

fn expected(events: &[Generated]) -> Vec<SseEvent> {
    events
        .iter()
        .map(|e| SseEvent {
            event: e.event.clone(),
            data: e.lines.join("\n").into(),
        })
        .collect()
}

fn parse_split(bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if bytes.is_empty() {
                0
            } else {
                c % (bytes.len() + 1)
            }
        })
        .collect();
    points.sort_unstable();
    // Reads are slices of one buffer, as a body's reads are of its frames.
    let whole = bytes::Bytes::copy_from_slice(bytes);
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let mut start = 0;
    for point in points {
        parser.push(&whole.slice(start..point), &mut out);
        start = point;
    }
    parser.push(&whole.slice(start..), &mut out);
    parser.finish(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_a_valid_stream_gives_the_same_events(
        events in proptest::collection::vec(event_strategy(), 0..8),
        ending in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        bom in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let bytes = render(&events, ending, bom);
        let want = expected(&events);
        prop_assert_eq!(&parse_all(&bytes), &want);
        prop_assert_eq!(&parse_split(&bytes, &cuts), &want);
        // One byte at a time, the worst split of all.
        let every: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(&parse_split(&bytes, &every), &want);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_splits_do_not_matter(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = parse_all(&bytes);
        prop_assert_eq!(parse_split(&bytes, &cuts), whole);
    }

    #[test]
    fn sse_shaped_noise_never_panics(
        pieces in proptest::collection::vec(
            prop_oneof![
                Just("data:".to_owned()), Just("data: ".to_owned()), Just("event:".to_owned()),
                Just(":".to_owned()), Just("\r".to_owned()), Just("\n".to_owned()),
                Just("\r\n".to_owned()), Just("[DONE]".to_owned()), Just("{\"a\":".to_owned()),
                Just("\u{FEFF}".to_owned()), Just("é".to_owned()), "[a-z ]{0,5}",
            ],
            0..64,
        ),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let bytes = pieces.concat().into_bytes();
        let whole = parse_all(&bytes);
        prop_assert_eq!(parse_split(&bytes, &cuts), whole);
    }
}
