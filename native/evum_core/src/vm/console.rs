//! Turns the raw byte stream of a UML console into the lines a user sees.
//!
//! A guest console is a terminal: lines end in CR LF, shells sprinkle escape
//! sequences (busybox asks for the cursor position with `ESC[6n` before every
//! prompt), and a program may print megabytes without a newline. The splitter
//! hides all of that: it yields lines without CR or escape sequences, cuts very
//! long lines into bounded chunks so no single message grows without limit, and
//! never drops a byte of text.

/// Longest line delivered as one message; longer lines arrive in chunks of this size.
pub const MAX_LINE: usize = 64 * 1024;

const ESC: u8 = 0x1b;

/// Where the splitter is inside an escape sequence, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// Plain text.
    None,
    /// Just saw ESC.
    Start,
    /// Saw ESC and intermediate bytes (`ESC (`), waiting for the final byte.
    Intermediate,
    /// Inside a control sequence (`ESC [`), waiting for its final byte.
    Csi,
    /// Inside an operating system command (`ESC ]`), ended by BEL or `ESC \`.
    Osc,
    /// Saw ESC inside an OSC: a `\` ends it.
    OscEsc,
}

/// Splits console output into lines. Feed it bytes as they come; it keeps
/// partial lines and half-read escape sequences between calls.
#[derive(Debug)]
pub struct LineSplitter {
    line: Vec<u8>,
    escape: Escape,
    max_line: usize,
    /// The text so far was cut at `max_line` and sent: a newline right after
    /// the cut ends that line and must not add an empty one.
    cut: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new(MAX_LINE)
    }
}

impl LineSplitter {
    /// A splitter that delivers lines of at most `max_line` bytes (at least 1).
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            line: Vec::new(),
            escape: Escape::None,
            max_line: max_line.max(1),
            cut: false,
        }
    }

    /// Consumes `bytes`, calling `emit` for every completed line (or chunk of an
    /// over-long line), in order.
    pub fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        for &b in bytes {
            self.escape = self.step(self.escape, b, &mut emit);
        }
    }

    /// Where `b` leaves the splitter, from `escape`.
    fn step(&mut self, escape: Escape, b: u8, emit: &mut impl FnMut(&[u8])) -> Escape {
        match (escape, b) {
            (Escape::None, ESC) => Escape::Start,
            (Escape::None, _) => {
                self.text(b, emit);
                Escape::None
            }
            (Escape::Start, b'[') => Escape::Csi,
            (Escape::Start, b']') => Escape::Osc,
            // Intermediates (0x20..=0x2f) then a final byte: `ESC ( B`
            // chooses a character set, and its `B` is no text.
            (Escape::Start | Escape::Intermediate, 0x20..=0x2f) => Escape::Intermediate,
            // A two-byte sequence such as `ESC 7` or `ESC =`, or the end of
            // `ESC ( B`: drop it all.
            (Escape::Start | Escape::Intermediate, 0x30..=0x7e) => Escape::None,
            // CSI parameters and intermediates are 0x20..=0x3f; any byte in
            // 0x40..=0x7e ends the sequence.
            (Escape::Csi, 0x20..=0x3f) => Escape::Csi,
            (Escape::Csi, 0x40..=0x7e) => Escape::None,
            // Anything else is malformed: the sequence ends before it, and
            // the byte is text (a newline must still end its line, a UTF-8
            // character stay whole) or the start of the next sequence.
            (Escape::Start | Escape::Intermediate | Escape::Csi, _) => self.step(Escape::None, b, emit),
            (Escape::Osc, 0x07) => Escape::None,
            (Escape::Osc, ESC) => Escape::OscEsc,
            (Escape::Osc, _) => Escape::Osc,
            (Escape::OscEsc, b'\\') => Escape::None,
            // An ESC that does not end the OSC starts the next sequence.
            (Escape::OscEsc, _) => self.step(Escape::Start, b, emit),
        }
    }

    /// A byte outside escape sequences.
    fn text(&mut self, b: u8, emit: &mut impl FnMut(&[u8])) {
        match b {
            b'\n' => {
                if !(self.cut && self.line.is_empty()) {
                    emit(&self.line);
                }
                self.line.clear();
                self.cut = false;
            }
            b'\r' => {}
            _ => {
                self.line.push(b);
                self.cut = false;
                if self.line.len() >= self.max_line {
                    emit(&self.line);
                    self.line.clear();
                    self.cut = true;
                }
            }
        }
    }

    /// True when a partial line is waiting for its newline.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty()
    }

    /// True when the partial line ends as a shell's prompt does (`# `, `$ `):
    /// nothing more is coming until someone types, so it need not wait.
    pub fn partial_is_prompt(&self) -> bool {
        self.line.ends_with(b"# ") || self.line.ends_with(b"$ ")
    }

    /// Delivers the partial line, if any: a shell prompt never ends in a
    /// newline, yet the user wants to see it. A newline that follows later
    /// ends the flushed text rather than adding an empty line.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.line.is_empty() {
            emit(&self.line);
            self.line.clear();
            self.cut = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_is_known_by_its_end() {
        let mut lines = LineSplitter::default();
        lines.feed(b"root@evm:~# ", |_| {});
        assert!(lines.partial_is_prompt());
        lines.flush(|_| {});
        lines.feed(b"Password: ", |_| {});
        assert!(lines.has_partial() && !lines.partial_is_prompt());
    }

    fn split(chunks: &[&[u8]], max: usize) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(l.to_vec()));
        }
        s.flush(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn strips_cr_and_splits_on_lf() {
        assert_eq!(
            split(&[b"one\r\ntwo\r\n\r\nthree"], 100),
            vec![b"one".to_vec(), b"two".to_vec(), b"".to_vec(), b"three".to_vec()]
        );
    }

    #[test]
    fn joins_lines_split_across_reads() {
        assert_eq!(
            split(&[b"hel", b"lo\r", b"\nx\n"], 100),
            vec![b"hello".to_vec(), b"x".to_vec()]
        );
    }

    #[test]
    fn removes_cursor_query_before_prompt_even_when_split() {
        assert_eq!(split(&[b"/ # \x1b", b"[6", b"n"], 100), vec![b"/ # ".to_vec()]);
    }

    #[test]
    fn removes_colour_and_osc_sequences() {
        assert_eq!(
            split(&[b"\x1b[1;32mgreen\x1b[0m \x1b]0;title\x07end\x1b]2;t\x1b\\!\n"], 100),
            vec![b"green end!".to_vec()]
        );
    }

    #[test]
    fn character_sets_and_malformed_sequences_leave_only_text() {
        // `ESC ( B` chooses a character set (xterm's sgr0 writes it).
        assert_eq!(split(&[b"a\x1b(Bb\n"], 100), vec![b"ab".to_vec()]);
        // A sequence cut off by a newline or a UTF-8 character ends there,
        // and the byte stays text.
        assert_eq!(
            split(&[b"a\x1b[\nb\x1b[1\xc3\xa9\n"], 100),
            vec![b"a".to_vec(), "b\u{e9}".as_bytes().to_vec()]
        );
        // An ESC that does not end an OSC starts the next sequence.
        assert_eq!(split(&[b"\x1b]0;t\x1b[1mx\n"], 100), vec![b"x".to_vec()]);
    }

    #[test]
    fn long_lines_come_in_bounded_chunks_without_loss() {
        let long = vec![b'a'; 25];
        let mut input = long.clone();
        input.extend_from_slice(b"\n");
        let out = split(&[&input], 10);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert_eq!(out.concat(), long);
    }

    #[test]
    fn a_newline_right_after_a_cut_adds_no_empty_line() {
        assert_eq!(
            split(&[b"0123456789\n\n"], 10),
            vec![b"0123456789".to_vec(), b"".to_vec()]
        );
    }

    #[test]
    fn keeps_non_ascii_bytes() {
        assert_eq!(split(&["héllo\n".as_bytes()], 100), vec!["héllo".as_bytes().to_vec()]);
    }
}

#[cfg(test)]
#[path = "console_props.rs"]
mod props;
