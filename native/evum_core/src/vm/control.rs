//! The command channel: a second serial line between evum and a small
//! command loop in the guest (`priv/guest/evum-ctl.c`), kept in raw mode so
//! that bytes pass unchanged.
//!
//! Host to guest, one command:
//!
//! ```text
//! RUN <id> <line count>\n<command text, that many lines>\n
//! RUNB <id> <line count>\n<the command in base64, that many lines>\n
//! SYNC <id> 0\n                      a stop's sync(2), in the loop itself
//! ```
//!
//! A command of printable ASCII, tabs and newlines in short lines goes as it
//! is. Anything else would reach the guest's terminal line, which does not
//! pass every byte (0xff wedges it) nor lines of about 4 KB whole, so such a
//! command goes in base64, in lines of 76, and the loop decodes it.
//!
//! Guest to host:
//!
//! ```text
//! \x01EVUM READY\n                                  the loop is up: the guest has booted
//! \x01EVUM RESULT <id> <exit status> <length>\n<length bytes of output>
//! ```
//!
//! Anything else the guest writes there is noise and is skipped, so a stray
//! program writing to the serial line cannot confuse the framing for long.
//! Each request has its own output limit ([`ControlParser::expect`]), at
//! most [`MAX_OUTPUT`]. A result longer than its limit is not kept: it is
//! reported as [`ControlEvent::OutputTooLarge`] as soon as its header says
//! so, and its bytes are skipped as noise (never stored), so a guest
//! claiming or sending any length cannot make evum hold more than the limit.

use std::collections::BTreeMap;

/// What the guest said on the command channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    Ready,
    Result {
        id: u64,
        status: i32,
        output: Vec<u8>,
    },
    /// A result claimed `length` bytes, more than its request's limit.
    OutputTooLarge {
        id: u64,
        length: u64,
    },
}

/// The most output one command may return (16 MiB): what the BEAM may be
/// made to hold for one result. The limit of a request evum did not send
/// (a stray or forged header) and the ceiling of every request's own.
pub const MAX_OUTPUT: u64 = 16 << 20;

/// Requests whose limits are kept until their results come. evum sends one
/// command at a time (and a stop's sync): more means results that never
/// came, whose limits go, oldest first.
const MAX_PENDING: usize = 16;

const MARK: u8 = 0x01;
const MAX_HEADER: usize = 128;

#[derive(Debug)]
enum State {
    /// Skipping bytes until the next MARK.
    Noise,
    /// Reading a header line after MARK.
    Header(Vec<u8>),
    /// Reading `remaining` bytes of a result's output.
    Body {
        id: u64,
        status: i32,
        remaining: usize,
        output: Vec<u8>,
    },
}

/// Parses the guest side of the channel, across reads of any size.
#[derive(Debug)]
pub struct ControlParser {
    state: State,
    /// The output limit of each request sent and not answered yet, by id.
    limits: BTreeMap<u64, u64>,
}

impl Default for ControlParser {
    fn default() -> Self {
        ControlParser {
            state: State::Noise,
            limits: BTreeMap::new(),
        }
    }
}

impl ControlParser {
    /// Request `id` has been sent: its result may have at most `max_output`
    /// bytes (never more than [`MAX_OUTPUT`]).
    pub fn expect(&mut self, id: u64, max_output: u64) {
        if self.limits.len() >= MAX_PENDING {
            self.limits.pop_first();
        }
        self.limits.insert(id, max_output.min(MAX_OUTPUT));
    }

    /// The limit of request `id`'s result, which is coming now.
    fn limit_of(&mut self, id: u64) -> u64 {
        self.limits.remove(&id).unwrap_or(MAX_OUTPUT)
    }

    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(ControlEvent)) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Noise => match bytes.iter().position(|&b| b == MARK) {
                    Some(i) => {
                        bytes = &bytes[i + 1..];
                        self.state = State::Header(Vec::new());
                    }
                    None => bytes = &[],
                },
                State::Header(line) => {
                    // Looks no further than one byte past the longest header,
                    // and a new MARK starts the header over: where a read
                    // ends must not change what is parsed, and a stray MARK
                    // or long line in the noise must not swallow the real
                    // header after it.
                    let window = &bytes[..bytes.len().min(MAX_HEADER + 1 - line.len())];
                    let end = window.iter().position(|&b| b == b'\n' || b == MARK);
                    let take = end.unwrap_or(window.len());
                    line.extend_from_slice(&window[..take]);
                    bytes = &bytes[take + usize::from(end.is_some())..];
                    if end.is_some_and(|i| window[i] == MARK) {
                        line.clear();
                    } else if line.len() > MAX_HEADER {
                        self.state = State::Noise;
                    } else if end.is_some() {
                        let header = parse_header(line);
                        self.state = match header {
                            Some(Header::Ready) => {
                                // A command loop that (re)started answers
                                // nothing sent before.
                                self.limits.clear();
                                emit(ControlEvent::Ready);
                                State::Noise
                            }
                            Some(Header::Result { id, status, length }) => {
                                if length > self.limit_of(id) {
                                    emit(ControlEvent::OutputTooLarge { id, length });
                                    State::Noise
                                } else {
                                    State::Body {
                                        id,
                                        status,
                                        // At most MAX_OUTPUT: fits.
                                        remaining: length as usize,
                                        output: Vec::with_capacity((length as usize).min(1 << 20)),
                                    }
                                }
                            }
                            None => State::Noise,
                        };
                    }
                }
                State::Body { remaining, output, .. } => {
                    let take = (*remaining).min(bytes.len());
                    output.extend_from_slice(&bytes[..take]);
                    *remaining -= take;
                    bytes = &bytes[take..];
                }
            }
            if let State::Body { remaining: 0, .. } = self.state {
                if let State::Body { id, status, output, .. } = std::mem::replace(&mut self.state, State::Noise) {
                    emit(ControlEvent::Result { id, status, output });
                }
            }
        }
    }

    /// The bytes the parser holds on to between reads.
    #[cfg(test)]
    fn held(&self) -> usize {
        match &self.state {
            State::Noise => 0,
            State::Header(line) => line.capacity(),
            State::Body { output, .. } => output.capacity(),
        }
    }
}

enum Header {
    Ready,
    Result { id: u64, status: i32, length: u64 },
}

fn parse_header(line: &[u8]) -> Option<Header> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_ascii_whitespace();
    if words.next()? != "EVUM" {
        return None;
    }
    match words.next()? {
        "READY" => Some(Header::Ready),
        "RESULT" => Some(Header::Result {
            id: words.next()?.parse().ok()?,
            status: words.next()?.parse().ok()?,
            length: words.next()?.parse().ok()?,
        }),
        _ => None,
    }
}

/// The bytes that ask the guest's loop to sync its file systems as request
/// `id`, answered as a command with no output. The loop makes the system
/// call itself: a `sync` command would be a guest process of its own (a
/// fork and an exec, each a round of host ptrace work), about half of a
/// stop's time.
pub fn sync_request(id: u64) -> Vec<u8> {
    format!("SYNC {id} 0\n").into_bytes()
}

/// The longest line a command may have to go as it is.
const MAX_PLAIN_LINE: usize = 512;

/// The bytes that ask the guest to run `command` as request `id`.
pub fn run_request(id: u64, command: &[u8]) -> Vec<u8> {
    let plain = command
        .iter()
        .all(|&b| b == b'\n' || b == b'\t' || (b' '..=b'~').contains(&b))
        && command.split(|&b| b == b'\n').all(|line| line.len() <= MAX_PLAIN_LINE);
    if plain {
        let lines = command.split(|&b| b == b'\n').count();
        return [format!("RUN {id} {lines}\n").as_bytes(), command, b"\n"].concat();
    }
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(command);
    let lines: Vec<&[u8]> = encoded.as_bytes().chunks(76).collect();
    let mut request = format!("RUNB {id} {}\n", lines.len()).into_bytes();
    for line in lines {
        request.extend_from_slice(line);
        request.push(b'\n');
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<ControlEvent> {
        let mut p = ControlParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| out.push(e));
        }
        out
    }

    #[test]
    fn a_claimed_length_over_the_limit_is_reported_and_not_kept() {
        let huge = format!("\x01EVUM RESULT 9 0 {}\n", MAX_OUTPUT + 1);
        let zeros = vec![0u8; 1 << 20];
        let events = parse(&[huge.as_bytes(), &zeros, &zeros, b"\x01EVUM RESULT 10 0 2\nok"]);
        assert_eq!(
            events,
            vec![
                ControlEvent::OutputTooLarge {
                    id: 9,
                    length: MAX_OUTPUT + 1
                },
                ControlEvent::Result {
                    id: 10,
                    status: 0,
                    output: b"ok".to_vec()
                },
            ]
        );
        // A length no integer holds is no header at all.
        assert!(parse(&[b"\x01EVUM RESULT 1 0 99999999999999999999999\n"]).is_empty());
    }

    #[test]
    fn each_request_has_its_own_limit() {
        let mut p = ControlParser::default();
        let mut events = Vec::new();
        p.expect(3, 4);
        p.expect(4, 4);
        p.expect(5, u64::MAX);
        // Over its limit: reported at the header, its bytes never kept.
        p.feed(b"\x01EVUM RESULT 3 0 5\n12345", |e| events.push(e));
        // At its limit, kept whole.
        p.feed(b"\x01EVUM RESULT 4 0 4\nabcd", |e| events.push(e));
        // A limit above the ceiling is the ceiling.
        let huge = format!("\x01EVUM RESULT 5 0 {}\n", MAX_OUTPUT + 1);
        p.feed(huge.as_bytes(), |e| events.push(e));
        assert_eq!(
            events,
            vec![
                ControlEvent::OutputTooLarge { id: 3, length: 5 },
                ControlEvent::Result {
                    id: 4,
                    status: 0,
                    output: b"abcd".to_vec()
                },
                ControlEvent::OutputTooLarge {
                    id: 5,
                    length: MAX_OUTPUT + 1
                },
            ]
        );
        // A limit serves one result; a restarted loop answers nothing sent before.
        assert!(p.limits.is_empty());
        p.expect(6, 1);
        p.feed(b"\x01EVUM READY\n", |_| {});
        assert!(p.limits.is_empty());
        // Results that never came do not pile up.
        for id in 0..100 {
            p.expect(id, 1);
        }
        assert_eq!(p.limits.len(), MAX_PENDING);
        assert!(p.limits.contains_key(&99));
    }

    #[test]
    fn ready_and_result_with_exact_bytes() {
        let events = parse(&[b"junk\x01EVUM READY\n\x01EVUM RESULT 7 3 6\nab\r\n\x00z"]);
        assert_eq!(
            events,
            vec![
                ControlEvent::Ready,
                ControlEvent::Result {
                    id: 7,
                    status: 3,
                    output: b"ab\r\n\x00z".to_vec()
                }
            ]
        );
    }

    #[test]
    fn frames_split_byte_by_byte() {
        let input = b"\x01EVUM RESULT 1 0 2\nok\x01EVUM READY\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            parse(&chunks),
            vec![
                ControlEvent::Result {
                    id: 1,
                    status: 0,
                    output: b"ok".to_vec()
                },
                ControlEvent::Ready
            ]
        );
    }

    #[test]
    fn empty_output_and_malformed_headers() {
        assert_eq!(
            parse(&[b"\x01EVUM RESULT 2 1 0\n\x01EVUM RESULT x\n\x01NOPE\n"]),
            vec![ControlEvent::Result {
                id: 2,
                status: 1,
                output: vec![]
            }]
        );
        let long = [vec![1u8], vec![b'A'; 500], b"\n\x01EVUM READY\n".to_vec()].concat();
        assert_eq!(parse(&[&long]), vec![ControlEvent::Ready]);
    }

    #[test]
    fn a_stray_mark_or_long_line_does_not_swallow_the_next_header() {
        assert_eq!(parse(&[b"\x01\x01EVUM READY\n"]), vec![ControlEvent::Ready]);
        let long = [vec![1u8], vec![b'A'; 200], b"\x01EVUM READY\n".to_vec()].concat();
        assert_eq!(parse(&[&long]), vec![ControlEvent::Ready]);
    }

    #[test]
    fn request_counts_lines() {
        assert_eq!(run_request(3, b"echo a\necho b"), b"RUN 3 2\necho a\necho b\n");
        assert_eq!(sync_request(0), b"SYNC 0 0\n");
        assert_eq!(run_request(4, b"printf '\xff'"), b"RUNB 4 1\ncHJpbnRmICf/Jw==\n");
        let long = run_request(5, &[0xfe; 100]);
        assert!(long.starts_with(b"RUNB 5 2\n"), "{}", String::from_utf8_lossy(&long));
    }
}

#[cfg(test)]
#[path = "control_props.rs"]
mod props;
