//! Delivery of a VM's events to BEAM processes, from evum's I/O thread.
//!
//! Console lines go to the VM's owner, as bare binaries like the original
//! evum or as `{evum, Server, {console, Line}}` when the VM was started
//! `tagged`, and `{evum, Server, {console_dropped, N}}` when delivery
//! resumes after N lines were dropped (`{console_overflow, drop}`); but the
//! echo of a line evum:send/2 typed goes to the VM's server, as
//! `{evum_echo, Tag, Line}`, to answer the caller with. The owner can
//! change while the VM runs ([`Routing`]). Command channel events and the
//! exit go to the VM's gen_server:
//! `{evum_ctl, ready}`, `{evum_ctl, {result, Id, Status, Output}}`, and
//! `{evum_exit, {exit_status, N} | {signal, Name}, Lines}`, where Lines are
//! the console's last lines before a guest that never came up died (the
//! kernel's own account of why), and `[]` for a guest that did.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use evum_core::vm::echo::{EchoMatcher, Routed};

use evum_core::{ControlEvent, Exit, VmEvents};
use rustler::{Binary, Encoder, Env, LocalPid, NewBinary, OwnedEnv, Term};

mod atoms {
    rustler::atoms! { evum, console, console_dropped, evum_console, evum_ctl, ready, result, output_too_large, evum_exit, exit_status, signal, evum_echo }
}

/// Where console lines go, shared by the I/O thread and the NIF calls that
/// change it: the owner, and the echoes the VM's server waits for (see
/// evum_core::vm::echo).
pub struct Routing {
    owner: LocalPid,
    echoes: EchoMatcher,
    /// How a line reaches the owner: the VM's server and `tagged`.
    server: LocalPid,
    tagged: bool,
}

/// The routing, as the VM's resource holds it.
pub type SharedRouting = Arc<Mutex<Routing>>;

impl Routing {
    pub fn new(owner: LocalPid, server: LocalPid, tagged: bool) -> SharedRouting {
        Arc::new(Mutex::new(Routing {
            owner,
            echoes: EchoMatcher::default(),
            server,
            tagged,
        }))
    }

    /// A console line as the owner receives it.
    pub fn line_term<'a>(&self, env: Env<'a>, line: &[u8]) -> Term<'a> {
        console_term(env, self.server, self.tagged, line)
    }

    pub fn owner(&self) -> LocalPid {
        self.owner
    }

    pub fn set_owner(&mut self, owner: LocalPid) {
        self.owner = owner;
    }

    /// The next echo of `text` goes to the VM's server as `{evum_echo, Tag,
    /// Text}`. False when evum_core::vm::echo::MAX_ECHOES are awaited.
    pub fn expect_echo(&mut self, text: Vec<u8>, tag: u64) -> bool {
        self.echoes.expect(text, tag)
    }

    /// The echo `tag` is no longer awaited; what was held back for it, for
    /// the owner.
    pub fn forget_echo(&mut self, tag: u64) -> Vec<Vec<u8>> {
        self.echoes.forget(tag)
    }
}

pub struct Mailboxes {
    env: OwnedEnv,
    routing: SharedRouting,
    server: LocalPid,
    tagged: bool,
    /// An owner a send to failed: it is dead, no more terms are built for
    /// it (a new owner may come: see [`Routing::set_owner`]).
    gone_owner: Option<LocalPid>,
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
    pub fn new(routing: SharedRouting, server: LocalPid, tagged: bool) -> Self {
        Mailboxes {
            env: OwnedEnv::new(),
            routing,
            server,
            tagged,
            gone_owner: None,
            boot_log: BootLog::default(),
            lines_sent: 0,
        }
    }

    fn owner(&self) -> LocalPid {
        self.routing.lock().unwrap_or_else(|p| p.into_inner()).owner()
    }

    /// A console line for `owner`, bare or tagged.
    fn deliver_to_owner(&mut self, owner: LocalPid, line: &[u8]) {
        if self.gone_owner == Some(owner) {
            return;
        }
        let (tagged, server) = (self.tagged, self.server);
        let sent = self
            .env
            .send_and_clear(&owner, |env| console_term(env, server, tagged, line));
        if sent.is_err() {
            self.gone_owner = Some(owner);
        }
        self.lines_sent += 1;
        if self.lines_sent.is_multiple_of(REPORT_EVERY) {
            self.tell_server(|env| atoms::evum_console().encode(env));
        }
    }

    fn tell_server(&mut self, make: impl for<'a> FnOnce(Env<'a>) -> Term<'a>) {
        // A dead server means the VM is being torn down; nothing to do.
        let _ = self.env.send_and_clear(&self.server, make);
    }
}

/// A console line for the owner: a bare binary, or `{evum, Server,
/// {console, Line}}` for a `tagged` VM.
fn console_term<'a>(env: Env<'a>, server: LocalPid, tagged: bool, line: &[u8]) -> Term<'a> {
    let line = binary(env, line);
    if tagged {
        (atoms::evum(), server, (atoms::console(), line)).encode(env)
    } else {
        line
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
        let routing = self.routing.clone();
        let mut routing = routing.lock().unwrap_or_else(|p| p.into_inner());
        let owner = routing.owner;
        routing.echoes.route(line, |routed| match routed {
            Routed::Owner(line) => self.deliver_to_owner(owner, line),
            Routed::Echo(tag, text) => self.tell_server(|env| (atoms::evum_echo(), tag, binary(env, text)).encode(env)),
        });
    }

    fn console_dropped(&mut self, lines: u64) {
        let owner = self.owner();
        if self.gone_owner == Some(owner) {
            return;
        }
        let server = self.server;
        let sent = self.env.send_and_clear(&owner, |env| {
            (atoms::evum(), server, (atoms::console_dropped(), lines)).encode(env)
        });
        if sent.is_err() {
            self.gone_owner = Some(owner);
        }
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
        // Pieces held back as a possible echo are the owner's after all.
        let held = self.routing.lock().unwrap_or_else(|p| p.into_inner()).echoes.release();
        let owner = self.owner();
        for line in held {
            self.deliver_to_owner(owner, &line);
        }
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
