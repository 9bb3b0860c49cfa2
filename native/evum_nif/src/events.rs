//! Delivery of a VM's events to BEAM processes, from evum's I/O thread.
//!
//! Console lines go to the VM's owner, as bare binaries like the original
//! evum or as `{evum, Server, {console, Line}}` when the VM was started
//! `tagged`. Command channel events and the exit go to the VM's gen_server:
//! `{evum_ctl, ready}`, `{evum_ctl, {result, Id, Status, Output}}`, and
//! `{evum_exit, {exit_status, N} | {signal, Name}}`.

use evum_core::{ControlEvent, Exit, VmEvents};
use rustler::{Binary, Encoder, Env, LocalPid, NewBinary, OwnedEnv, Term};

mod atoms {
    rustler::atoms! { evum, console, evum_ctl, ready, result, evum_exit, exit_status, signal }
}

pub struct Mailboxes {
    env: OwnedEnv,
    owner: LocalPid,
    server: LocalPid,
    tagged: bool,
    /// Set when a send to the owner fails: it is dead, stop building terms.
    owner_gone: bool,
}

impl Mailboxes {
    pub fn new(owner: LocalPid, server: LocalPid, tagged: bool) -> Self {
        Mailboxes {
            env: OwnedEnv::new(),
            owner,
            server,
            tagged,
            owner_gone: false,
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
    evum_core::io_loop::Signal::try_from(number)
        .map(|s| s.as_str().to_ascii_lowercase())
        .unwrap_or_else(|_| number.to_string())
}

impl VmEvents for Mailboxes {
    fn console_line(&mut self, line: &[u8]) {
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
    }

    fn control(&mut self, event: ControlEvent) {
        self.tell_server(|env| match event {
            ControlEvent::Ready => (atoms::evum_ctl(), atoms::ready()).encode(env),
            ControlEvent::Result { id, status, output } => {
                (atoms::evum_ctl(), (atoms::result(), id, status, binary(env, &output))).encode(env)
            }
        });
    }

    fn exited(&mut self, exit: Exit) {
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
            (atoms::evum_exit(), how).encode(env)
        });
    }
}
