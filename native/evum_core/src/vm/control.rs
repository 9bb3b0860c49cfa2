//! The command channel: a second serial line between evum and a small shell
//! loop in the guest (`priv/guest/evum-ctl`), kept in raw mode so that bytes
//! pass unchanged.
//!
//! Host to guest, one command:
//!
//! ```text
//! RUN <id> <line count>\n<command text, that many lines>\n
//! ```
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

/// What the guest said on the command channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    Ready,
    Result { id: u64, status: i32, output: Vec<u8> },
}

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
}

impl Default for ControlParser {
    fn default() -> Self {
        ControlParser { state: State::Noise }
    }
}

impl ControlParser {
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
                    let (take, done) = match bytes.iter().position(|&b| b == b'\n') {
                        Some(i) => (i, true),
                        None => (bytes.len(), false),
                    };
                    line.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[(take + usize::from(done)).min(bytes.len())..];
                    if line.len() > MAX_HEADER {
                        self.state = State::Noise;
                    } else if done {
                        self.state = match parse_header(line) {
                            Some(Header::Ready) => {
                                emit(ControlEvent::Ready);
                                State::Noise
                            }
                            Some(Header::Result { id, status, length }) => State::Body {
                                id,
                                status,
                                remaining: length,
                                output: Vec::with_capacity(length.min(1 << 20)),
                            },
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
}

enum Header {
    Ready,
    Result { id: u64, status: i32, length: usize },
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

/// The bytes that ask the guest to run `command` as request `id`.
pub fn run_request(id: u64, command: &str) -> Vec<u8> {
    let lines = command.split('\n').count();
    format!("RUN {id} {lines}\n{command}\n").into_bytes()
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
    fn request_counts_lines() {
        assert_eq!(run_request(3, "echo a\necho b"), b"RUN 3 2\necho a\necho b\n");
    }
}
