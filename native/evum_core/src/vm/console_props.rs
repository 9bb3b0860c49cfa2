//! Property tests of the console splitter: text between well-formed escape
//! sequences (ECMA-48's CSI and OSC, and ESC with intermediates and a final
//! byte) comes out whole, split at newlines and cut at the line limit, in
//! whatever reads it arrives.

use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::*;
use crate::testing::{chunked, config, costly_config, cuts};

/// The lines a splitter of `max_line` gives for `chunks`, flushed at the end.
fn split(chunks: &[&[u8]], max_line: usize) -> Vec<Vec<u8>> {
    let mut splitter = LineSplitter::new(max_line);
    let mut lines = Vec::new();
    for chunk in chunks {
        splitter.feed(chunk, |l| lines.push(l.to_vec()));
    }
    splitter.flush(|l| lines.push(l.to_vec()));
    lines
}

/// The lines `text` (console output without escape sequences) should come
/// out as: CRs gone, split at newlines, cut every `max_line` bytes, and a
/// newline right after a cut adding no empty line.
fn lines_of(text: &[u8], max_line: usize) -> Vec<Vec<u8>> {
    let text: Vec<u8> = text.iter().copied().filter(|&b| b != b'\r').collect();
    let mut lines = Vec::new();
    let mut segments = text.split(|&b| b == b'\n').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            lines.push(Vec::new());
        }
        lines.extend(segment.chunks(max_line).map(<[u8]>::to_vec));
    }
    lines
}

/// Console text: any bytes but ESC, with newlines and CRs in plenty.
fn text() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![4 => any::<u8>().prop_filter("ESC", |&b| b != ESC), 1 => Just(b'\n'), 1 => Just(b'\r')];
    prop::collection::vec(byte, 0..40)
}

fn bytes_in(range: std::ops::RangeInclusive<u8>, len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(range, len)
}

/// CSI: parameters, intermediates, a final byte (`ESC [ 1 ; 3 2 m`).
fn csi() -> impl Strategy<Value = Vec<u8>> {
    (bytes_in(0x30..=0x3f, 0..6), bytes_in(0x20..=0x2f, 0..2), 0x40..=0x7eu8)
        .prop_map(|(params, inter, last)| [&[ESC, b'['][..], &params, &inter, &[last]].concat())
}

/// An escape sequence and the text it leaves behind: none for a well-formed
/// one; for one cut off by a byte that cannot go on it, that byte.
fn sequence() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let not_in_sequence = any::<u8>().prop_filter("ESC or in a sequence", |&b| b != ESC && !(0x20..=0x7e).contains(&b));
    let osc_body = prop::collection::vec(any::<u8>().prop_filter("BEL or ESC", |&b| b != 0x07 && b != ESC), 0..20);
    prop_oneof![
        csi().prop_map(|csi| (csi, vec![])),
        // OSC, ended by BEL or ST (`ESC ] 0 ; title BEL`), or cut off by
        // the next sequence.
        (osc_body, 0..3u8, csi()).prop_map(|(body, end, csi)| {
            let end: &[u8] = match end {
                0 => &[0x07],
                1 => &[ESC, b'\\'],
                _ => &csi,
            };
            ([&[ESC, b']'][..], &body, end].concat(), vec![])
        }),
        // ESC and one byte (`ESC 7`, `ESC =`).
        (0x30..=0x7eu8)
            .prop_filter("CSI or OSC", |&b| b != b'[' && b != b']')
            .prop_map(|b| (vec![ESC, b], vec![])),
        // ESC, intermediates, a final byte (`ESC ( B`).
        (bytes_in(0x20..=0x2f, 1..3), 0x30..=0x7eu8)
            .prop_map(|(inter, last)| ([&[ESC][..], &inter, &[last]].concat(), vec![])),
        // A sequence cut off by a newline, a control or a non-ASCII byte.
        (bytes_in(0x30..=0x3f, 0..4), not_in_sequence.clone())
            .prop_map(|(params, b)| ([&[ESC, b'['][..], &params, &[b]].concat(), vec![b])),
        (bytes_in(0x20..=0x2f, 0..2), not_in_sequence)
            .prop_map(|(inter, b)| ([&[ESC][..], &inter, &[b]].concat(), vec![b])),
    ]
}

/// Console output: text and escape sequences, with the text they leave.
fn console() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let piece = prop_oneof![text().prop_map(|t| (t.clone(), t)), sequence()];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| {
        let (raw, text): (Vec<Vec<u8>>, Vec<Vec<u8>>) = pieces.into_iter().unzip();
        (raw.concat(), text.concat())
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn text_between_escape_sequences_comes_out_whole((raw, text) in console(), max_line in 1..24usize, cuts in cuts()) {
        prop_assert_eq!(split(&chunked(&raw, &cuts), max_line), lines_of(&text, max_line));
    }

    #[test]
    fn the_reads_output_comes_in_do_not_change_its_lines(
        raw in prop_oneof![console().prop_map(|(raw, _)| raw), prop::collection::vec(any::<u8>(), 0..300)],
        max_line in 1..24usize,
        cuts in cuts(),
    ) {
        let whole = split(&[&raw], max_line);
        prop_assert_eq!(split(&chunked(&raw, &cuts), max_line), whole.clone());
        let bytewise: Vec<&[u8]> = raw.chunks(1).collect();
        prop_assert_eq!(split(&bytewise, max_line), whole.clone());
        for line in whole {
            prop_assert!(line.len() <= max_line);
            prop_assert!(!line.iter().any(|&b| b == ESC || b == b'\r' || b == b'\n'), "{:?}", line);
        }
    }

    #[test]
    fn flushing_a_partial_line_loses_no_text(
        (raw, text) in console(),
        max_line in 1..24usize,
        cuts in cuts(),
    ) {
        // The I/O loop flushes a prompt, or any partial line after a while,
        // between any two reads.
        let mut splitter = LineSplitter::new(max_line);
        let mut lines = Vec::new();
        for chunk in chunked(&raw, &cuts) {
            splitter.feed(chunk, |l| lines.push(l.to_vec()));
            splitter.flush(|l| lines.push(l.to_vec()));
        }
        prop_assert!(lines.iter().all(|l| l.len() <= max_line));
        let expected: Vec<u8> = text.into_iter().filter(|&b| b != b'\r' && b != b'\n').collect();
        prop_assert_eq!(lines.concat(), expected);
    }
}

/// Lines of the real limit, 64 KiB: a few cases, each some 100 KB. Its own
/// runner, as the `proptest!` macro would run all of PROPTEST_CASES.
#[test]
fn lines_never_exceed_the_limit() {
    let mut runner = TestRunner::new(costly_config(8, file!()));
    let inputs = (0..3 * MAX_LINE, 0x20..=0x7eu8, cuts());
    let result = runner.run(&inputs, |(run, byte, cuts)| {
        let raw = [vec![byte; run], b"\r\n".to_vec(), vec![byte; run / 2]].concat();
        let lines = split(&chunked(&raw, &cuts), MAX_LINE);
        prop_assert!(lines.iter().all(|l| l.len() <= MAX_LINE));
        prop_assert_eq!(lines, lines_of(&raw, MAX_LINE));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
