//! The echoes of lines typed on a VM's console, picked out of its output.
//!
//! evum:send/2 types a line and answers its caller with the line's echo,
//! which must then not reach the VM's owner as well. The guest's terminal
//! echoes lines in the order they were typed, after the prompt if one is
//! on the line, and a busy host may deliver one echo in pieces: the console
//! hands on a partial line that has waited a few milliseconds. So each
//! console line is either the echo awaited first (whole, or the last piece
//! of it), a piece that may begin or continue it (held back until it is
//! clear), or the owner's. Pieces held back that turn out not to be the echo
//! go to the owner after all, in order: nothing the guest writes is lost.

use std::collections::VecDeque;

/// Echoes that may be awaited at once.
pub const MAX_ECHOES: usize = 64;

/// Where a console line goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed<'a> {
    /// To the VM's owner, as any console line.
    Owner(&'a [u8]),
    /// The echo awaited as `tag`, complete: the text typed.
    Echo(u64, &'a [u8]),
}

#[derive(Debug)]
struct Awaited {
    text: Vec<u8>,
    tag: u64,
}

/// The echoes awaited, oldest first, and the pieces held back as the
/// possible start of the first.
#[derive(Debug, Default)]
pub struct EchoMatcher {
    awaited: VecDeque<Awaited>,
    held: Vec<Vec<u8>>,
    /// Bytes of the first echo's text the held pieces end with.
    matched: usize,
}

impl EchoMatcher {
    /// The next echo of `text` is `tag`'s. False when [`MAX_ECHOES`] are
    /// awaited already.
    pub fn expect(&mut self, text: Vec<u8>, tag: u64) -> bool {
        if self.awaited.len() >= MAX_ECHOES {
            return false;
        }
        self.awaited.push_back(Awaited { text, tag });
        true
    }

    /// `tag`'s echo is no longer awaited (its caller gave up): the pieces
    /// held for it, if it was the first, are returned, for the owner.
    pub fn forget(&mut self, tag: u64) -> Vec<Vec<u8>> {
        let first = self.awaited.front().is_some_and(|a| a.tag == tag);
        self.awaited.retain(|a| a.tag != tag);
        if first {
            self.matched = 0;
            std::mem::take(&mut self.held)
        } else {
            Vec::new()
        }
    }

    /// Whatever is held back, for the owner (the VM has ended).
    pub fn release(&mut self) -> Vec<Vec<u8>> {
        self.matched = 0;
        std::mem::take(&mut self.held)
    }

    /// Routes one console line, calling `to` for it and for any piece held
    /// back before it that is now known to be the owner's, in order.
    pub fn route(&mut self, line: &[u8], mut to: impl FnMut(Routed<'_>)) {
        let Some(first) = self.awaited.front() else {
            return to(Routed::Owner(line));
        };
        let text = &first.text;
        if !self.held.is_empty() {
            let rest = &text[self.matched..];
            if !line.is_empty() && rest.starts_with(line) {
                self.matched += line.len();
                if self.matched == text.len() {
                    self.complete(&mut to);
                } else {
                    self.held.push(line.to_vec());
                }
                return;
            }
            // Not the echo after all.
            self.matched = 0;
            for piece in std::mem::take(&mut self.held) {
                to(Routed::Owner(&piece));
            }
        }
        let text = &self.awaited.front().map(|a| &a.text).expect("checked above");
        if line.ends_with(text) {
            return self.complete(&mut to);
        }
        // The start of the echo, after the prompt maybe: the longest tail of
        // the line that the text begins with.
        if let Some(start) = (0..line.len()).find(|&k| text.starts_with(&line[k..])) {
            self.matched = line.len() - start;
            self.held.push(line.to_vec());
            return;
        }
        to(Routed::Owner(line));
    }

    fn complete(&mut self, to: &mut impl FnMut(Routed<'_>)) {
        self.held.clear();
        self.matched = 0;
        if let Some(done) = self.awaited.pop_front() {
            to(Routed::Echo(done.tag, &done.text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes each line, returning where each went, as owned text.
    fn run(m: &mut EchoMatcher, lines: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for line in lines {
            m.route(line.as_bytes(), |r| {
                out.push(match r {
                    Routed::Owner(l) => format!("owner:{}", String::from_utf8_lossy(l)),
                    Routed::Echo(tag, l) => format!("echo{tag}:{}", String::from_utf8_lossy(l)),
                })
            });
        }
        out
    }

    #[test]
    fn lines_go_to_the_owner_when_no_echo_is_awaited() {
        let mut m = EchoMatcher::default();
        assert_eq!(run(&mut m, &["a", "hostname"]), ["owner:a", "owner:hostname"]);
    }

    #[test]
    fn the_echo_is_the_callers_with_or_without_the_prompt() {
        let mut m = EchoMatcher::default();
        assert!(m.expect(b"hostname".to_vec(), 1));
        assert!(m.expect(b"uptime".to_vec(), 2));
        let out = run(&mut m, &["boot line", "root@evm:~# hostname", "evm", "uptime", "up"]);
        assert_eq!(
            out,
            [
                "owner:boot line",
                "echo1:hostname",
                "owner:evm",
                "echo2:uptime",
                "owner:up"
            ]
        );
    }

    #[test]
    fn an_echo_in_pieces_is_put_together() {
        let mut m = EchoMatcher::default();
        m.expect(b"echo via label".to_vec(), 7);
        let out = run(&mut m, &["root@evm:~# echo v", "ia la", "bel", "via label"]);
        assert_eq!(out, ["echo7:echo via label", "owner:via label"]);
    }

    #[test]
    fn pieces_that_were_not_the_echo_go_to_the_owner_in_order() {
        let mut m = EchoMatcher::default();
        m.expect(b"hostname".to_vec(), 1);
        // "ho" may begin it; "x" shows it did not.
        let out = run(&mut m, &["say ho", "x", "hostname"]);
        assert_eq!(out, ["owner:say ho", "owner:x", "echo1:hostname"]);
    }

    #[test]
    fn forgetting_releases_what_was_held() {
        let mut m = EchoMatcher::default();
        m.expect(b"hostname".to_vec(), 1);
        assert!(run(&mut m, &["# host"]).is_empty());
        assert_eq!(m.forget(1), vec![b"# host".to_vec()]);
        assert_eq!(run(&mut m, &["hostname"]), ["owner:hostname"]);
        m.expect(b"a".to_vec(), 2);
        m.expect(b"b".to_vec(), 3);
        assert!(m.forget(3).is_empty());
        assert_eq!(run(&mut m, &["b", "a"]), ["owner:b", "echo2:a"]);
    }

    #[test]
    fn at_most_max_echoes_are_awaited() {
        let mut m = EchoMatcher::default();
        for tag in 0..MAX_ECHOES as u64 {
            assert!(m.expect(b"x".to_vec(), tag));
        }
        assert!(!m.expect(b"x".to_vec(), 99));
        assert!(run(&mut m, &["# x"]).len() == 1);
        assert!(m.release().is_empty());
    }
}
