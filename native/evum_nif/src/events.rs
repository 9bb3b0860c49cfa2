//! Delivery of a VM's events to BEAM processes, from evum's I/O thread.
//!
//! Console lines go to the VM's owner, as bare binaries like the original
//! evum or as `{evum, Server, {console, Line}}` when the VM was started
//! `tagged`, and `{evum, Server, {console_dropped, N}}` when delivery
//! resumes after N lines were dropped (`{console_overflow, drop}`). Command channel events and the exit go to the VM's gen_server:
//! `{evum_ctl, ready}`, `{evum_ctl, {result, Id, Status, Output}}`, and
//! `{evum_exit, {exit_status, N} | {signal, Name}, Lines}`, where Lines are
//! the console's last lines before a guest that never came up died (the
//! kernel's own account of why), and `[]` for a guest that did.

use std::collections::VecDeque;

use evum_core::{ControlEvent, Exit, VmEvents};
use rustler::{Binary, Encoder, Env, LocalPid, NewBinary, OwnedEnv, Term};

mod atoms {
    rustler::atoms! { evum, console, console_dropped, evum_console, evum_ctl, ready, result, output_too_large, evum_exit, exit_status, signal }
}

pub struct Mailboxes {
    env: OwnedEnv,
    owner: LocalPid,
    server: LocalPid,
    tagged: bool,
    /// Set when a send to the owner fails: it is dead, stop building terms.
    owner_gone: bool,
    boot_log: BootLog,
    /// Console lines sent to the owner: every [`REPORT_EVERY`] the server
    /// hears, and checks the owner keeps up.
    lines_sent: u64,
}

/// How often (in console lines) the VM's server is told lines are flowing.
const REPORT_EVERY: u64 = 1000;

/// The console's last lines while the guest boots, for the exit to carry:
/// they went to the owner's mailbox, but the caller of evm:create/1 needs
/// them in its error. Bounded, and dropped once the guest is up. A panic's
/// stack dump is left out: it is 30 lines of addresses that would push the
/// panic's own message, the line that says why, out of the ring.
#[derive(Default)]
struct BootLog {
    lines: VecDeque<Vec<u8>>,
    booted: bool,
}

impl BootLog {
    /// A panic and the few lines that explain it fit; a boot log does not
    /// need to.
    const LINES: usize = 20;
    const LINE_BYTES: usize = 512;

    fn push(&mut self, line: &[u8]) {
        if self.booted || is_stack_dump(line) {
            return;
        }
        if self.lines.len() == Self::LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(truncated(line, Self::LINE_BYTES).to_vec());
    }

    fn booted(&mut self) {
        self.booted = true;
        self.lines = VecDeque::new();
    }
}

/// A line of a kernel stack dump: ` [<6002d37a>] ? _printk+0x0/0x57` (the
/// call trace) or ` 60521d5c 6086c130 64803cd8 6052dad0` (the stack's words),
/// with or without the log level (`<4>`) a panic before the console is up
/// prints its log with.
fn is_stack_dump(line: &[u8]) -> bool {
    let line = without_log_level(line);
    if !line.starts_with(b" ") {
        return false;
    }
    let rest = line.trim_ascii_start();
    let hex_word = |w: &[u8]| w.len() >= 8 && w.iter().all(u8::is_ascii_hexdigit);
    rest.starts_with(b"[<") || (!rest.is_empty() && rest.split(|&b| b == b' ').all(hex_word))
}

/// A kernel log line without its `<N>` level prefix.
fn without_log_level(line: &[u8]) -> &[u8] {
    match line {
        [b'<', level, b'>', rest @ ..] if level.is_ascii_digit() => rest,
        _ => line,
    }
}

/// The first `max` bytes of a line, not cutting a UTF-8 character in two.
fn truncated(line: &[u8], max: usize) -> &[u8] {
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    // Back off continuation bytes (10xxxxxx) to the character's start.
    while end > max.saturating_sub(3) && line[end] & 0xc0 == 0x80 {
        end -= 1;
    }
    &line[..end]
}

impl Mailboxes {
    pub fn new(owner: LocalPid, server: LocalPid, tagged: bool) -> Self {
        Mailboxes {
            env: OwnedEnv::new(),
            owner,
            server,
            tagged,
            owner_gone: false,
            boot_log: BootLog::default(),
            lines_sent: 0,
        }
    }

    fn tell_server(&mut self, make: impl for<'a> FnOnce(Env<'a>) -> Term<'a>) {
        // A dead server means the VM is being torn down; nothing to do.
        let _ = self.env.send_and_clear(&self.server, make);
    }
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let bin: Binary<'a> = NewBinary::from_slice(env, bytes).into();
    bin.encode(env)
}

fn signal_name(number: i32) -> String {
    evum_core::vm::io_loop::Signal::try_from(number)
        .map(|s| s.as_str().to_ascii_lowercase())
        .unwrap_or_else(|_| number.to_string())
}

impl VmEvents for Mailboxes {
    fn console_line(&mut self, line: &[u8]) {
        self.boot_log.push(line);
        if self.owner_gone {
            return;
        }
        let (tagged, server) = (self.tagged, self.server);
        let sent = self.env.send_and_clear(&self.owner, |env| {
            let line = binary(env, line);
            if tagged {
                (atoms::evum(), server, (atoms::console(), line)).encode(env)
            } else {
                line
            }
        });
        self.owner_gone = sent.is_err();
        self.lines_sent += 1;
        if self.lines_sent.is_multiple_of(REPORT_EVERY) {
            self.tell_server(|env| atoms::evum_console().encode(env));
        }
    }

    fn console_dropped(&mut self, lines: u64) {
        if self.owner_gone {
            return;
        }
        let server = self.server;
        let sent = self.env.send_and_clear(&self.owner, |env| {
            (atoms::evum(), server, (atoms::console_dropped(), lines)).encode(env)
        });
        self.owner_gone = sent.is_err();
    }

    fn control(&mut self, event: ControlEvent) {
        if matches!(event, ControlEvent::Ready) {
            self.boot_log.booted();
        }
        self.tell_server(|env| match event {
            ControlEvent::Ready => (atoms::evum_ctl(), atoms::ready()).encode(env),
            ControlEvent::Result { id, status, output } => {
                (atoms::evum_ctl(), (atoms::result(), id, status, binary(env, &output))).encode(env)
            }
            ControlEvent::OutputTooLarge { id, length } => {
                (atoms::evum_ctl(), (atoms::output_too_large(), id, length)).encode(env)
            }
        });
    }

    fn exited(&mut self, exit: Exit) {
        let lines = std::mem::take(&mut self.boot_log.lines);
        self.tell_server(|env| {
            let how = match exit {
                Exit::Status(code) => (atoms::exit_status(), code).encode(env),
                Exit::Signal(number) => {
                    let name = signal_name(number);
                    let atom = rustler::Atom::from_str(env, &name)
                        .map(|a| a.encode(env))
                        .unwrap_or_else(|_| number.encode(env));
                    (atoms::signal(), atom).encode(env)
                }
            };
            let lines: Vec<Term> = lines.iter().map(|line| binary(env, line)).collect();
            (atoms::evum_exit(), how, lines).encode(env)
        });
    }
}
