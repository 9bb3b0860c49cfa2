//! Property tests of the command channel: the guest's side parsed from any
//! bytes in reads of any size, and the host's requests read back as the
//! guest's loop (`priv/guest/evum-ctl.c`) reads them.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::testing::{chunked, config, cuts};

fn parse(chunks: &[&[u8]]) -> Vec<ControlEvent> {
    let mut parser = ControlParser::default();
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, |e| events.push(e));
    }
    events
}

/// What the guest writes for `event`, a too large result without its output.
fn frame(event: &ControlEvent) -> Vec<u8> {
    match event {
        ControlEvent::Ready => b"\x01EVUM READY\n".to_vec(),
        ControlEvent::Result { id, status, output } => {
            let header = format!("\x01EVUM RESULT {id} {status} {}\n", output.len());
            [header.as_bytes(), output].concat()
        }
        ControlEvent::OutputTooLarge { id, length } => format!("\x01EVUM RESULT {id} 0 {length}\n").into_bytes(),
    }
}

fn event() -> impl Strategy<Value = ControlEvent> {
    prop_oneof![
        1 => Just(ControlEvent::Ready),
        4 => (any::<u64>(), any::<i32>(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(id, status, output)| ControlEvent::Result { id, status, output }),
        1 => (any::<u64>(), MAX_OUTPUT + 1..=u64::MAX)
            .prop_map(|(id, length)| ControlEvent::OutputTooLarge { id, length }),
    ]
}

/// What a stray program may write between frames: anything but an `E`, so
/// that it holds no header, yet with marks, newlines and lines longer than a
/// header in plenty.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = prop::sample::select(b"\x01\x01\n\n VUMREADYSLT0123456789-\xff".to_vec());
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(alphabet, 0..64),
        (1..400usize, any::<bool>()).prop_map(|(n, mark)| {
            let mut run = vec![b'A'; n];
            if mark {
                run[0] = MARK;
            }
            run
        }),
    ]
    .prop_map(|bytes| bytes.into_iter().map(|b| if b == b'E' { b'e' } else { b }).collect())
}

/// Frames among noise, and sometimes a frame with a byte changed or cut
/// short: any stream a guest might write.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        event().prop_map(|e| frame(&e)),
        noise(),
        (event(), any::<Index>(), any::<u8>()).prop_map(|(e, at, byte)| {
            let mut bytes = frame(&e);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            bytes
        }),
        (event(), any::<Index>()).prop_map(|(e, at)| {
            let bytes = frame(&e);
            bytes[..at.index(bytes.len())].to_vec()
        }),
        (any::<u64>(), 0..=MAX_OUTPUT)
            .prop_map(|(id, length)| format!("\x01EVUM RESULT {id} 1 {length}\n").into_bytes()),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_reads_a_stream_comes_in_do_not_change_its_events(bytes in stream(), cuts in cuts()) {
        let whole = parse(&[&bytes]);
        prop_assert_eq!(parse(&chunked(&bytes, &cuts)), whole.clone());
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(parse(&bytewise), whole);
    }

    #[test]
    fn frames_are_found_whatever_noise_comes_before(
        pieces in prop::collection::vec((noise(), event()), 0..6),
        tail in noise(),
        cuts in cuts(),
    ) {
        let mut bytes = Vec::new();
        for (noise, event) in &pieces {
            bytes.extend_from_slice(noise);
            bytes.extend_from_slice(&frame(event));
        }
        bytes.extend_from_slice(&tail);
        let expected: Vec<ControlEvent> = pieces.into_iter().map(|(_, e)| e).collect();
        prop_assert_eq!(parse(&chunked(&bytes, &cuts)), expected);
    }

    #[test]
    fn what_the_parser_holds_stays_bounded(bytes in stream(), cuts in cuts()) {
        let mut parser = ControlParser::default();
        let mut fed = 0;
        for chunk in chunked(&bytes, &cuts) {
            parser.feed(chunk, |_| {});
            fed += chunk.len();
            // A header line, or a result's output: at most 1 MiB up front
            // and then what arrived (twice, as a Vec grows).
            let bound = (2 * (MAX_HEADER + 1)).max(1 << 20).max(2 * fed);
            prop_assert!(parser.held() <= bound, "{} held after {fed} bytes", parser.held());
        }
    }

    #[test]
    fn a_claimed_length_over_the_limit_is_never_held(
        id in any::<u64>(),
        length in MAX_OUTPUT + 1..=u64::MAX,
        after in prop::collection::vec(any::<u8>(), 0..512),
        cuts in cuts(),
    ) {
        let bytes = [format!("\x01EVUM RESULT {id} 0 {length}\n").as_bytes(), &after].concat();
        let mut parser = ControlParser::default();
        let mut events = Vec::new();
        for chunk in chunked(&bytes, &cuts) {
            parser.feed(chunk, |e| events.push(e));
            prop_assert!(parser.held() <= 2 * (MAX_HEADER + 1), "{} held", parser.held());
        }
        prop_assert_eq!(events.first(), Some(&ControlEvent::OutputTooLarge { id, length }));
    }

    #[test]
    fn requests_read_back_as_the_guest_reads_them(id in any::<u64>(), command in command()) {
        let request = run_request(id, &command);
        let text = String::from_utf8_lossy(&request).into_owned();
        prop_assert!(request.ends_with(b"\n"), "{text}");
        let mut lines = request[..request.len() - 1].split(|&b| b == b'\n');
        let header = String::from_utf8(lines.next().unwrap().to_vec()).unwrap();
        let words: Vec<&str> = header.split(' ').collect();
        prop_assert_eq!(words.len(), 3, "{}", text);
        prop_assert_eq!(words[1].parse::<u64>().ok(), Some(id));
        let lines: Vec<&[u8]> = lines.collect();
        prop_assert_eq!(words[2].parse::<usize>().ok(), Some(lines.len()));
        // evum-ctl reads that many lines, each with its newline, and
        // decodes them, joined without, if they are base64.
        let read_back = match words[0] {
            "RUN" => {
                for line in &lines {
                    prop_assert!(line.len() <= MAX_PLAIN_LINE);
                    prop_assert!(line.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)), "{}", text);
                }
                let mut joined = lines.join(&b'\n');
                joined.push(b'\n');
                prop_assert_eq!(joined.pop(), Some(b'\n'));
                joined
            }
            "RUNB" => {
                use base64::Engine;
                prop_assert!(lines.iter().all(|line| line.len() <= 76));
                base64::engine::general_purpose::STANDARD.decode(lines.concat()).unwrap()
            }
            other => return Err(TestCaseError::fail(format!("request {other}"))),
        };
        prop_assert_eq!(read_back, command);
    }
}

/// A command: shell text, text with long lines, or any bytes.
fn command() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~\t\n]{0,100}".prop_map(String::into_bytes),
        ("[a-z]{0,600}", "[a-z\n]{0,40}").prop_map(|(a, b)| [a, b].concat().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..300),
    ]
}
